"""The pipeline: an ordered list of named stages, checked when built, run with resume.

>>> from pcamflow.stages import Trainer
>>> Pipeline([("train", object())])
Traceback (most recent call last):
...
pcamflow.errors.PipelineDefinitionError: stage 'train': object is not a pcamflow Stage

A run happens in the run folder, where ``run.json`` records every stage's status
(``completed``, ``failed``, ``interrupted``, ``running``), start, end, duration, artifact, the
fingerprint of the settings and inputs that made it, the settings tables it covers, and the
error text. A stage is complete when its record says ``completed`` with the same fingerprint
and its artifact still exists; a re-run skips complete stages, so an interrupted run resumes
where it stopped.

:class:`RunObserver` objects passed to :meth:`Pipeline.run` are told when the run starts, as
each stage ends (or is found complete) and when the run ends: the run report and experiment
tracking hook in there, and stages know nothing of them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pcamflow._io import (
    StageRecord,
    new_run_id,
    read_run_record,
    run_id,
    utc_now,
    write_run_record,
)
from pcamflow._placement import misplaced, placement_line
from pcamflow._structure import converter
from pcamflow.artifacts import Artifact
from pcamflow.errors import (
    ConfigError,
    MissingInputError,
    PcamflowError,
    PipelineDefinitionError,
    PlacementError,
    StageNameNotUniqueError,
)
from pcamflow.plan import Plan
from pcamflow.probes import by_scheme
from pcamflow.stages import Context, Stage, stage_output_dir

__all__ = ["Pipeline", "RunObserver", "RunResult", "StageRecord", "read_run_record"]

log = logging.getLogger("pcamflow")


@attrs.frozen
class RunResult:
    """The outcome of :meth:`Pipeline.run`.

    Attributes:
        run_dir: the run folder.
        records: stage name -> record, as written to ``run.json``.
        ran: names of the stages that ran this time (the others were complete already).
    """

    run_dir: Path
    records: dict[str, StageRecord]
    ran: tuple[str, ...]

    @property
    def artifacts(self) -> dict[str, Artifact]:
        """Stage name -> artifact, for the completed stages."""
        return {
            name: artifact
            for name, record in self.records.items()
            if record.status == "completed" and (artifact := record.load_artifact()) is not None
        }

    def __getitem__(self, name: str) -> Artifact:
        return self.artifacts[name]


class RunObserver:
    """Told what a :meth:`Pipeline.run` does; subclass it and override what you need.

    The runner calls :meth:`run_started` once every stage that will run has validated, then
    :meth:`stage_ended` for each stage found complete (``ran=False``) and for each stage as it
    finishes, whatever its status, then :meth:`run_ended`, also when a stage failed or was
    interrupted. An error in :meth:`run_started` stops the run before any stage runs; errors
    in the other two are logged as warnings, so an observer never costs the work of a run.
    """

    def run_started(self, run_dir: Path, settings: Any, stages: Mapping[str, str]) -> None:
        """The run is about to start its first stage.

        Args:
            run_dir: the run folder.
            settings: the run's settings.
            stages: stage name -> kind (``trainer``, ...) of every stage, in pipeline order.
        """

    def stage_ended(self, name: str, record: StageRecord, ran: bool) -> None:
        """A stage finished (``ran``), or was found complete from an earlier run."""

    def run_ended(self, result: RunResult, error: BaseException | None) -> None:
        """The run is over: ``error`` is what stopped it, or None when every stage completed."""

    def summary(self) -> str | None:
        """One line for the person who started the run (where to look), or None."""
        return None


def recorded_settings(stage: Stage, settings: Any) -> dict[str, Any]:
    """The settings tables (and options) a stage's fingerprint covers, as JSON-ready values
    shaped as in the TOML file."""
    if callable(getattr(settings, "to_dict", None)):
        shaped = settings.to_dict()
        tables = {name: shaped.get(name) for name in stage.settings_sections}
    else:
        tables = {
            name: converter.unstructure(getattr(settings, name, None))
            for name in stage.settings_sections
        }
    options = stage.options()
    if options:
        tables["options"] = converter.unstructure(options)
    return tables


class Pipeline:
    """An ordered list of ``(name, stage)`` pairs.

    The list is checked when built: names are unique, each item is a :class:`Stage`, and each
    stage's ``requires`` are produced by an earlier stage.

    Args:
        steps: ``(name, stage)`` pairs in order.

    Raises:
        StageNameNotUniqueError: two stages share a name.
        MissingInputError: a stage needs an artifact type that no earlier stage produces.
        PlacementError: a stage reads an input from a place where the stage that makes it
            does not put it (:attr:`~pcamflow.stages.Stage.reads_from`, ``writes_to``).
        PipelineDefinitionError: an item is not a stage.
    """

    def __init__(self, steps: Sequence[tuple[str, Stage]]) -> None:
        seen: set[str] = set()
        produced: list[type[Artifact]] = []
        for item in steps:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise PipelineDefinitionError(f"{item!r}: expected a (name, stage) pair")
            name, stage = item
            if not isinstance(stage, Stage):
                raise PipelineDefinitionError(
                    f"stage {name!r}: {type(stage).__name__} is not a pcamflow Stage"
                )
            if not name or "/" in name or name.startswith("."):
                raise PipelineDefinitionError(f"stage {name!r}: a name must be a plain folder name")
            if name in seen:
                raise StageNameNotUniqueError(f"stage name {name!r} is used twice")
            seen.add(name)
            for need in stage.requires:
                if not any(issubclass(p, need) for p in produced):
                    raise MissingInputError(
                        f"stage {name!r} ({type(stage).__name__}) needs a {need.__name__}, "
                        "which no earlier stage produces"
                    )
            produced.append(stage.produces)
        self.steps: tuple[tuple[str, Stage], ...] = tuple(steps)
        mismatches = misplaced(self.steps)
        if mismatches:
            raise PlacementError(
                "\n".join(placement_line(*m) for m in mismatches), mismatches
            )

    @classmethod
    def from_settings(cls, settings: Any, registry: Any) -> Pipeline:
        """The pipeline that ``settings.pipeline`` names, with stages from ``registry``."""
        steps = []
        for kind, name in settings.pipeline.stage_names().items():
            stage_cls = registry.get(kind, name)
            steps.append((stage_cls.default_name, stage_cls()))
        try:
            return cls(steps)
        except PlacementError as error:
            # the settings name the stages: say which setting to change, and to what
            lines = [placement_line(*m, registry=registry) for m in error.mismatches]
            raise PlacementError(
                "the pipeline's stages keep their artifacts in different places:\n  "
                + "\n  ".join(lines), error.mismatches
            ) from None

    @property
    def names(self) -> tuple[str, ...]:
        """The stage names, in order."""
        return tuple(name for name, _ in self.steps)

    def __getitem__(self, name: str) -> Stage:
        for step_name, stage in self.steps:
            if step_name == name:
                return stage
        raise KeyError(name)

    def __repr__(self) -> str:
        inner = ", ".join(f"({n!r}, {s!r})" for n, s in self.steps)
        return f"Pipeline([{inner}])"

    def services(
        self, settings: Any, given: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """``given``, plus what each stage brings for itself (:meth:`Stage.provide_services`).

        What the caller passed wins; ``"probes"`` (URI scheme -> probe) are merged.
        """
        merged: dict[str, Any] = dict(given or {})
        for _, stage in self.steps:
            for key, value in stage.provide_services(settings, merged).items():
                if key == "probes":
                    merged["probes"] = {**dict(value), **dict(merged.get("probes") or {})}
                else:
                    merged.setdefault(key, value)
        return merged

    def plan(self, settings: Any, services: Mapping[str, Any] | None = None) -> Plan:
        """What every stage would send to paid services, and the cost: the sum of their plans.

        Nothing is sent. Each stage's :meth:`~pcamflow.stages.Stage.plan` sees the artifacts of
        the stages before it that the run folder has recorded as completed; the rest it
        estimates.
        """
        run_dir = Path(settings.run_dir)
        records = read_run_record(run_dir)
        rid = run_id(run_dir) or ""
        artifacts: dict[str, Artifact] = {}
        plans = []
        for name, stage in self.steps:
            context = Context(
                settings=settings, run_dir=run_dir, stage_dir=stage_output_dir(run_dir, name),
                artifacts=dict(artifacts), services=dict(services or {}), stage_name=name,
                run_id=rid,
            )
            plans.append(stage.plan(context))
            record = records.get(name)
            if record is not None and record.status == "completed":
                artifact = record.load_artifact()
                if artifact is not None:
                    artifacts[name] = artifact
        return Plan.combine(plans)

    def _check_name(self, name: str | None, option: str) -> None:
        if name is not None and name not in self.names:
            raise PipelineDefinitionError(
                f"{option} {name!r}: no such stage; stages: {', '.join(self.names)}"
            )

    def validate(self, settings: Any, *, services: Mapping[str, Any] | None = None) -> None:
        """Run every stage's :meth:`~pcamflow.stages.Stage.validate` without running any.

        The contexts are those of a fresh run (no artifacts of earlier stages), marked
        ``offline``, so that no check reaches the network. This is what ``pcamflow validate``
        does. Every stage is checked, so that one call reports every problem.

        Raises:
            PcamflowError: what the one stage that failed raised; or, when several problems
                were found, a :class:`~pcamflow.errors.ConfigError` listing each once, with
                the stages that found it.
        """
        run_dir = Path(settings.run_dir)
        upstream: dict[str, str] = {}
        found: dict[str, tuple[PcamflowError, list[str]]] = {}
        for name, stage in self.steps:
            context = Context(
                settings=settings,
                run_dir=run_dir,
                stage_dir=stage_output_dir(run_dir, name),
                services=dict(services or {}),
                stage_name=name,
                upstream=dict(upstream),
                offline=True,
            )
            log.debug("validating %s", name)
            try:
                stage.validate(context)
            except PcamflowError as error:
                found.setdefault(str(error), (error, []))[1].append(name)
            upstream[name] = stage.fingerprint(context)
        if len(found) == 1:
            raise next(iter(found.values()))[0]
        if found:
            lines = [f"{message} (stage{'s' if len(names) > 1 else ''} {', '.join(names)})"
                     for message, (_, names) in found.items()]
            raise ConfigError(f"{len(lines)} problems:\n  " + "\n  ".join(lines))

    def run(
        self,
        settings: Any,
        *,
        force: bool = False,
        from_stage: str | None = None,
        only: str | None = None,
        services: Mapping[str, Any] | None = None,
        observers: Sequence[RunObserver] = (),
    ) -> RunResult:
        """Run the stages that are not complete, in order, in ``settings.run_dir``.

        Every stage that will run is validated before the first one runs.

        Args:
            settings: the run's settings.
            force: run every stage, complete or not.
            from_stage: run this stage and all after it, complete or not.
            only: run just this stage (its inputs must be complete from an earlier run).
            services: clients and other objects handed to stages through the context;
                ``services["probes"]`` (URI scheme -> probe, see :mod:`pcamflow.probes`)
                checks recorded artifacts in places the core cannot look (``s3://``). What
                a stage needs and this lacks, the stage brings (:meth:`services`).
            observers: told of the run's start, each stage's end and the run's end (see
                :class:`RunObserver`), in this order.

        Raises:
            Whatever a stage raises; its record says ``failed`` (or ``interrupted`` on Ctrl-C).
        """
        self._check_name(from_stage, "--from")
        self._check_name(only, "--only")
        run_dir = Path(settings.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        records = read_run_record(run_dir)
        # recorded with the first stage record this run writes, and kept from then on
        rid = run_id(run_dir) or new_run_id()
        services = self.services(settings, services)
        # whether a recorded artifact is still there, asked by each location's URI scheme
        is_there = by_scheme(services.get("probes"))
        names = self.names
        rerun_from = names.index(from_stage) if from_stage else len(names)

        # Fingerprints chain: each covers the stage's settings and the ones before it.
        fingerprints: dict[str, str] = {}
        for name, stage in self.steps:
            probe = Context(
                settings=settings,
                run_dir=run_dir,
                stage_dir=stage_output_dir(run_dir, name),
                services=services,
                stage_name=name,
                upstream=dict(fingerprints),
                run_id=rid,
            )
            fingerprints[name] = stage.fingerprint(probe)

        def context_for(name: str, artifacts: Mapping[str, Artifact]) -> Context:
            before = names[: names.index(name)]
            return Context(
                settings=settings,
                run_dir=run_dir,
                stage_dir=stage_output_dir(run_dir, name),
                artifacts=dict(artifacts),
                services=services,
                stage_name=name,
                upstream={n: fingerprints[n] for n in before},
                run_id=rid,
            )

        def recorded(name: str, check_fingerprint: bool = True) -> Artifact | None:
            """The recorded artifact if the stage is complete (same fingerprint, still there)."""
            record = records.get(name)
            if record is None or record.status != "completed" or not record.artifact:
                return None
            if check_fingerprint and record.fingerprint != fingerprints[name]:
                return None
            artifact = record.load_artifact()
            return artifact if artifact is not None and artifact.exists(is_there) else None

        artifacts: dict[str, Artifact] = {}
        if only is not None:
            for n in names[: names.index(only)]:
                if (found := recorded(n, check_fingerprint=False)) is not None:
                    artifacts[n] = found
            for need in self[only].requires:
                if not any(isinstance(a, need) for a in artifacts.values()):
                    raise MissingInputError(
                        f"--only {only}: needs a complete {need.__name__} from an earlier run "
                        f"in {run_dir}; run the stages before it first"
                    )
            todo = [only]
        else:
            # the first stage that is not complete: it and every stage after it run
            first = len(names)
            for index, name in enumerate(names):
                previous = recorded(name)
                if force or index >= rerun_from or previous is None:
                    first = index
                    break
                log.info("[%s] complete, skipped", name)
                artifacts[name] = previous
            todo = list(names[first:])
        for name in todo:
            log.debug("validating %s", name)
            self[name].validate(context_for(name, artifacts))

        kinds = {name: stage.kind for name, stage in self.steps}
        for observer in observers:  # an error here stops the run before any work
            observer.run_started(run_dir, settings, kinds)
        for name in artifacts:
            _tell(observers, "stage_ended", name, records[name], False)
        ran: list[str] = []
        try:
            for name in todo:
                context = context_for(name, artifacts)
                ran.append(name)
                try:
                    artifacts[name] = self._run_stage(
                        name, self[name], context, fingerprints[name], records, run_dir, rid
                    )
                finally:
                    if name in records:
                        _tell(observers, "stage_ended", name, records[name], True)
        except BaseException as error:
            failed = RunResult(run_dir=run_dir, records=dict(records), ran=tuple(ran))
            _tell(observers, "run_ended", failed, error)
            raise
        result = RunResult(run_dir=run_dir, records=dict(records), ran=tuple(todo))
        _tell(observers, "run_ended", result, None)
        return result

    def _run_stage(
        self,
        name: str,
        stage: Stage,
        context: Context,
        fingerprint: str,
        records: dict[str, StageRecord],
        run_dir: Path,
        rid: str,
    ) -> Artifact:
        context.stage_dir.mkdir(parents=True, exist_ok=True)
        started, clock = utc_now(), time.monotonic()
        stage_label = f"{type(stage).__module__}.{type(stage).__qualname__}"
        used = recorded_settings(stage, context.settings)
        records[name] = StageRecord(
            name=name, stage=stage_label, status="running", fingerprint=fingerprint,
            started=started, kind=stage.kind, settings=used,
        )
        write_run_record(run_dir, records, self.names, run_id=rid)
        log.info("[%s] running %s", name, type(stage).__name__)

        def finish(status: str, artifact: Artifact | None = None, error: str | None = None) -> None:
            records[name] = StageRecord(
                name=name,
                stage=stage_label,
                status=status,
                fingerprint=fingerprint,
                started=started,
                ended=utc_now(),
                duration_s=round(time.monotonic() - clock, 3),
                artifact=artifact.to_dict() if artifact is not None else None,
                error=error,
                kind=stage.kind,
                settings=used,
            )
            write_run_record(run_dir, records, self.names, run_id=rid)

        try:
            artifact = stage.run(context)
        except KeyboardInterrupt:
            finish("interrupted", error="interrupted (KeyboardInterrupt)")
            log.warning("[%s] interrupted; a re-run resumes here", name)
            raise
        except BaseException as error:
            finish("failed", error=f"{type(error).__name__}: {error}")
            raise
        if not isinstance(artifact, stage.produces):
            message = (
                f"{type(stage).__name__}.run returned {type(artifact).__name__}, "
                f"expected {stage.produces.__name__}"
            )
            finish("failed", error=message)
            raise PipelineDefinitionError(f"stage {name!r}: {message}")
        finish("completed", artifact=artifact)
        log.info("[%s] completed in %.1f s", name, records[name].duration_s or 0.0)
        return artifact



def _tell(observers: Sequence[RunObserver], event: str, *args: Any) -> None:
    """Call ``event`` on every observer; an observer's error is logged, never raised."""
    for observer in observers:
        try:
            getattr(observer, event)(*args)
        except Exception as error:
            log.warning("%s.%s failed: %s: %s", type(observer).__name__, event,
                        type(error).__name__, error)
