"""The stage contract: ``validate(context)`` then ``run(context) -> Artifact``.

A stage is a small object with two methods. ``validate`` makes the cheap checks (settings,
inputs, credentials) before any work or spend, raising an error that names the setting;
``run`` does the work and returns the artifact it made. The :class:`~pcamflow.pipeline.Pipeline`
hands each stage a :class:`Context` with the settings, the run folder, the stage's own output
folder and the artifacts of earlier stages.

Two optional hooks let a stage that uses a paid service answer for itself, so that nothing
needs to know its name: ``plan(context)`` returns the requests it would send and what they
would cost (:class:`~pcamflow.plan.Plan`; ``pcamflow plan`` adds them up and the spend guard
asks each stage), and ``provide_services(settings, services)`` brings the clients and probes
it needs when the caller passed none.

The six abstract stages say what each step takes and makes; users subclass them::

    class MyTrainer(Trainer):
        def run(self, context: Context) -> ModelArtifact:
            manifests = context.input(Manifests)
            ...
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs

from pcamflow._io import digest
from pcamflow.artifacts import (
    Artifact,
    Endpoint,
    Evaluation,
    ImageDataset,
    Manifests,
    ModelArtifact,
    TuningResult,
)
from pcamflow.config import Settings
from pcamflow.errors import MissingInputError
from pcamflow.plan import Plan

__all__ = [
    "STAGE_KINDS",
    "Context",
    "DataConverter",
    "Deployer",
    "Evaluator",
    "ManifestBuilder",
    "Stage",
    "Trainer",
    "Tuner",
]

_A = TypeVar("_A", bound=Artifact)


@attrs.frozen
class Context:
    """What a stage sees while it validates and runs.

    Attributes:
        settings: the run's :class:`~pcamflow.config.Settings`.
        run_dir: the run folder (``run.json`` lies there).
        stage_dir: this stage's own output folder, ``run_dir/<stage name>``.
        artifacts: stage name -> artifact, for the stages before this one that have one.
        services: clients and other shared objects passed in by the caller (for example
            ``{"aws": AwsClients(...)}``), so stages need no global state.
        stage_name: the name this stage has in the pipeline.
        upstream: stage name -> fingerprint, for the stages before this one; a stage's
            fingerprint includes them, so a re-run upstream re-runs everything after it.
        run_id: the run's id (kept in ``run.json``; empty outside a pipeline run), which tells
            apart runs whose folders share a name.
        offline: set when only validating (``pcamflow validate``,
            :meth:`~pcamflow.pipeline.Pipeline.validate`): :meth:`Stage.validate` must then
            make no network call and start nothing; a check that needs a service is left
            to the real run.
    """

    settings: Settings
    run_dir: Path
    stage_dir: Path
    artifacts: Mapping[str, Artifact] = attrs.field(factory=dict)
    services: Mapping[str, Any] = attrs.field(factory=dict)
    stage_name: str = ""
    upstream: Mapping[str, str] = attrs.field(factory=dict)
    run_id: str = ""
    offline: bool = False

    def input(self, kind: type[_A]) -> _A:
        """The latest earlier artifact of type ``kind``.

        Raises:
            MissingInputError: no earlier stage made one.
        """
        found = self.optional_input(kind)
        if found is None:
            raise MissingInputError(
                f"stage {self.stage_name!r} needs a {kind.__name__}, which no earlier stage made"
            )
        return found

    def optional_input(self, kind: type[_A]) -> _A | None:
        """The latest earlier artifact of type ``kind``, or None."""
        for artifact in reversed(list(self.artifacts.values())):
            if isinstance(artifact, kind):
                return artifact
        return None

    def service(self, name: str, default: Any = None) -> Any:
        """A service passed in by the caller, or ``default``."""
        return self.services.get(name, default)


class Stage(abc.ABC):
    """One step of a pipeline.

    Subclasses set the class attributes and implement :meth:`run` (and usually :meth:`validate`).

    Attributes:
        kind: the stage kind (``converter``, ``manifest_builder``, ...), set by the abstract stages.
        default_name: the stage's name in a pipeline built from settings.
        requires: artifact types this stage needs from earlier stages.
        accepts: artifact types it uses when an earlier stage made one, and does without otherwise.
        produces: the artifact type :meth:`run` returns.
        settings_sections: the settings tables that change this stage's output; they make its
            fingerprint, so that a change re-runs the stage and everything after it.
        writes_to: where the artifact :meth:`run` returns lives: ``"local"`` (files on this
            machine), ``"s3"``, or None (unsaid, or nowhere in particular, as tuned values).
        reads_from: the places this stage can read its inputs from, or None (any). The
            pipeline refuses, when built, a stage whose input is made where it cannot read it.
    """

    kind: ClassVar[str] = ""
    default_name: ClassVar[str] = ""
    requires: ClassVar[tuple[type[Artifact], ...]] = ()
    accepts: ClassVar[tuple[type[Artifact], ...]] = ()
    produces: ClassVar[type[Artifact]] = Artifact
    settings_sections: ClassVar[tuple[str, ...]] = ()
    writes_to: ClassVar[str | None] = None
    reads_from: ClassVar[frozenset[str] | None] = None

    def validate(self, context: Context) -> None:  # noqa: B027 - optional hook
        """Cheap checks before any work or spend; raise an error naming the setting.

        When ``context.offline`` is set, checks that need the network (credentials, a
        bucket, a quota) are skipped: ``pcamflow validate`` runs this with no service.
        """

    @abc.abstractmethod
    def run(self, context: Context) -> Artifact:
        """Do the stage's work and return the artifact it made."""

    def plan(self, context: Context) -> Plan | None:
        """The requests :meth:`run` would send to paid services, and their estimated cost.

        Sends nothing. ``context.artifacts`` holds what earlier stages of the run folder have
        already made; where an input is not made yet, its values are estimated or shown as
        placeholders. A stage that spends nothing outside this machine returns None (the
        default). Build the requests with the same code :meth:`run` sends them with, so the
        two cannot drift.
        """
        return None

    def provide_services(
        self, settings: Settings, services: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        """Services this stage needs that ``services`` (what the caller passed) lacks.

        Called before a run; what it returns is added to the context's services of every
        stage (``"probes"`` merged by URI scheme). The default needs nothing.
        """
        return {}

    def fingerprint(self, context: Context) -> str:
        """A digest of what this stage's output depends on.

        It covers the stage's class, its ``settings_sections``, :meth:`options` and the
        fingerprints of the stages before it (``context.upstream``).
        """
        settings = context.settings
        payload = {
            "stage": f"{type(self).__module__}.{type(self).__qualname__}",
            "settings": {
                name: getattr(settings, name, None) for name in self.settings_sections
            },
            "options": self.options(),
            "upstream": dict(context.upstream),
        }
        return digest(payload)

    def options(self) -> dict[str, Any]:
        """The stage object's own options that change its output (for the fingerprint)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class DataConverter(Stage):
    """PCam HDF5 files -> a JPEG image tree (:class:`ImageDataset`)."""

    kind = "converter"
    default_name = "convert"
    produces = ImageDataset
    settings_sections = ("data", "convert")

    @abc.abstractmethod
    def run(self, context: Context) -> ImageDataset: ...


class ManifestBuilder(Stage):
    """An image tree -> augmented manifests and ``.lst`` files (:class:`Manifests`)."""

    kind = "manifest_builder"
    default_name = "manifests"
    requires = (ImageDataset,)
    produces = Manifests
    settings_sections = ("manifests",)

    @abc.abstractmethod
    def run(self, context: Context) -> Manifests: ...


class Tuner(Stage):
    """Manifests -> the best hyperparameters found (:class:`TuningResult`)."""

    kind = "tuner"
    default_name = "tune"
    requires = (Manifests,)
    produces = TuningResult
    settings_sections = ("train", "tune")

    @abc.abstractmethod
    def run(self, context: Context) -> TuningResult: ...


class Trainer(Stage):
    """Manifests (and tuned hyperparameters, if any) -> a model (:class:`ModelArtifact`)."""

    kind = "trainer"
    default_name = "train"
    requires = (Manifests,)
    accepts = (TuningResult,)
    produces = ModelArtifact
    settings_sections = ("train",)

    @abc.abstractmethod
    def run(self, context: Context) -> ModelArtifact: ...


class Evaluator(Stage):
    """A model and the test manifest -> metrics and a report (:class:`Evaluation`)."""

    kind = "evaluator"
    default_name = "evaluate"
    requires = (Manifests, ModelArtifact)
    produces = Evaluation
    settings_sections = ("evaluate",)

    @abc.abstractmethod
    def run(self, context: Context) -> Evaluation: ...


class Deployer(Stage):
    """A model -> a prediction endpoint (:class:`Endpoint`)."""

    kind = "deployer"
    default_name = "deploy"
    requires = (ModelArtifact,)
    produces = Endpoint
    settings_sections = ("deploy",)

    @abc.abstractmethod
    def run(self, context: Context) -> Endpoint: ...

    def teardown(self, endpoint: Endpoint, context: Context) -> None:
        """Stop the endpoint and delete what :meth:`run` created."""
        raise NotImplementedError(f"{type(self).__name__} cannot tear endpoints down")


STAGE_KINDS: dict[str, type[Stage]] = {
    cls.kind: cls for cls in (DataConverter, ManifestBuilder, Tuner, Trainer, Evaluator, Deployer)
}
"""Stage kind -> its abstract class, in pipeline order."""


def stage_output_dir(run_dir: Path, name: str) -> Path:
    """Where a stage called ``name`` writes its outputs."""
    return Path(run_dir) / name
