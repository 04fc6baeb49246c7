"""What stages produce: frozen value objects that serialise to JSON and know if they exist.

Each artifact names where its content lives (a local path or an ``s3://`` URI) and carries the
small facts later stages need (counts, metrics, hyperparameters). ``exists(probe)`` answers
whether that content is there, asking a probe (:mod:`pcamflow.probes`) about each location;
without one, only the core's probes (local paths, ``http(s)://``) are known.

>>> art = ModelArtifact(uri="runs/demo/train/model.tar.gz", hyperparameters={"epochs": "2"})
>>> Artifact.from_json(art.to_json()) == art
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from pcamflow._structure import converter
from pcamflow.errors import PcamflowError
from pcamflow.probes import Probe, by_scheme

__all__ = [
    "Artifact",
    "Endpoint",
    "Evaluation",
    "ImageDataset",
    "Manifests",
    "ModelArtifact",
    "TuningResult",
]

SPLITS = ("train", "valid", "test")

_A = TypeVar("_A", bound="Artifact")
_TYPES: dict[str, type[Artifact]] = {}


@attrs.frozen
class Artifact:
    """Base of all artifacts: JSON round-trip and an existence check."""

    _tag: ClassVar[str] = "artifact"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _TYPES[cls.__name__] = cls

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, tagged with the artifact's type."""
        return {"type": type(self).__name__, **converter.unstructure(self)}

    def to_json(self) -> str:
        """The artifact as a JSON string."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[_A], data: Mapping[str, Any]) -> _A:
        """Rebuild an artifact from :meth:`to_dict`'s output; the ``type`` key picks the class."""
        data = dict(data)
        name = data.pop("type", cls.__name__)
        try:
            target = _TYPES[name]
        except KeyError:
            raise PcamflowError(
                f"unknown artifact type {name!r}; known: {sorted(_TYPES)}"
            ) from None
        if not issubclass(target, cls):
            raise PcamflowError(f"artifact type {name!r} is not a {cls.__name__}")
        return converter.structure(data, target)

    @classmethod
    def from_json(cls: type[_A], text: str) -> _A:
        """Rebuild an artifact from :meth:`to_json`'s output."""
        return cls.from_dict(json.loads(text))

    def locations(self) -> tuple[str, ...]:
        """The paths or URIs that must exist for this artifact to be complete."""
        return ()

    def exists(self, probe: Probe | None = None) -> bool:
        """Whether every location of the artifact is there, as ``probe`` says.

        Args:
            probe: ``probe(location) -> bool`` (None: the core's, by scheme; see
                :func:`pcamflow.probes.by_scheme` to add others, such as ``s3://``).

        Raises:
            PcamflowError: a location's scheme has no probe.
        """
        check = probe or by_scheme()
        return all(check(location) for location in self.locations())


@attrs.frozen
class ImageDataset(Artifact):
    """A tree of JPEG images ``<root>/<split>/<label>/<split>_<index:06d>.jpg``.

    Attributes:
        root: the tree's root folder (or ``s3://`` prefix once uploaded).
        counts: images per split and class label, e.g. ``{"train": {"0": 10, "1": 12}}``.
        local_root: where the images lie on this machine, if ``root`` is remote.
    """

    root: str
    counts: dict[str, dict[str, int]] = attrs.field(factory=dict)
    local_root: str | None = None

    def total(self, split: str | None = None) -> int:
        """Images in one split, or in all."""
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts.get(s, {}).values()) for s in splits)

    def locations(self) -> tuple[str, ...]:
        return (self.local_root or self.root,)


@attrs.frozen
class Manifests(Artifact):
    """Augmented manifests (JSON Lines) and ``.lst`` files, one of each per split.

    Attributes:
        manifests: split -> manifest location (``.manifest``, JSON Lines).
        lst: split -> ``.lst`` location.
        counts: split -> number of lines.
        image_root: the image tree the manifests point into.
    """

    manifests: dict[str, str]
    lst: dict[str, str] = attrs.field(factory=dict)
    counts: dict[str, int] = attrs.field(factory=dict)
    image_root: str = ""

    def locations(self) -> tuple[str, ...]:
        return (*self.manifests.values(), *self.lst.values())


@attrs.frozen
class TuningResult(Artifact):
    """The outcome of hyperparameter tuning.

    Attributes:
        best_hyperparameters: the best trial's hyperparameters, as the algorithm's strings.
        objective: the objective's metric name, e.g. ``validation:accuracy``.
        best_value: the best trial's objective value.
        trials: where the table of trials (CSV) lies.
        job_name: the tuning job's name, when tuned on SageMaker.
    """

    best_hyperparameters: dict[str, str]
    objective: str = "validation:accuracy"
    best_value: float | None = None
    trials: str | None = None
    job_name: str | None = None

    def locations(self) -> tuple[str, ...]:
        return (self.trials,) if self.trials else ()


@attrs.frozen
class ModelArtifact(Artifact):
    """A trained model: a ``model.tar.gz`` as SageMaker writes it.

    Attributes:
        uri: the archive's path or ``s3://`` URI.
        hyperparameters: what it was trained with, as the algorithm's strings.
        metrics: final metrics of training (e.g. ``validation:accuracy``).
        job_name: the training job's name, when trained on SageMaker.
    """

    uri: str
    hyperparameters: dict[str, str] = attrs.field(factory=dict)
    metrics: dict[str, float] = attrs.field(factory=dict)
    job_name: str | None = None

    def locations(self) -> tuple[str, ...]:
        return (self.uri,)


@attrs.frozen
class Evaluation(Artifact):
    """Test-set metrics and where the report lies.

    Attributes:
        metrics: metric name -> value (``accuracy``, ``roc_auc``, ...); ``None`` when undefined.
        report: the folder (or ``report.html``) holding plots and the report.
        metrics_file: the ``metrics.json`` location.
    """

    metrics: dict[str, float | None]
    report: str
    metrics_file: str | None = None

    def locations(self) -> tuple[str, ...]:
        return (self.report,) + ((self.metrics_file,) if self.metrics_file else ())


@attrs.frozen
class Endpoint(Artifact):
    """A deployed prediction endpoint.

    Attributes:
        name: the endpoint's name.
        url: the base URL (local) or ``None`` for a SageMaker endpoint reached through boto3.
        backend: ``"local"`` or ``"sagemaker"``.
        pid: the server process id, for a local endpoint.
        region: the AWS region, for a SageMaker endpoint.
        resources: names of what was created (model, endpoint config), for teardown.
    """

    name: str
    url: str | None = None
    backend: str = "local"
    pid: int | None = None
    region: str | None = None
    resources: dict[str, str] = attrs.field(factory=dict)

    def locations(self) -> tuple[str, ...]:
        """A local endpoint's ``/ping`` URL; a SageMaker endpoint has none (it is not probed)."""
        if self.backend != "local" or not self.url:
            return ()
        return (f"{self.url.rstrip('/')}/ping",)
