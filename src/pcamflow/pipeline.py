"""The pipeline: an ordered list of named stages, checked when built, run with resume.

>>> from pcamflow.stages import Trainer
>>> Pipeline([("train", object())])
Traceback (most recent call last):
...
pcamflow.errors.PipelineDefinitionError: stage 'train': object is not a pcamflow Stage

A run happens in the run folder, where ``run.json`` records every stage's status
(``completed``, ``failed``, ``interrupted``, ``running``), start, end, duration, artifact, the
fingerprint of the settings and inputs that made it, and the error text. A stage is complete
when its record says ``completed`` with the same fingerprint and its artifact still exists;
a re-run skips complete stages, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from pcamflow._io import StageRecord, read_run_record, utc_now, write_run_record
from pcamflow.artifacts import Artifact
from pcamflow.errors import (
    MissingInputError,
    PipelineDefinitionError,
    StageNameNotUniqueError,
)
from pcamflow.stages import Context, Stage, stage_output_dir

__all__ = ["Pipeline", "RunResult", "StageRecord", "read_run_record"]

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


class Pipeline:
    """An ordered list of ``(name, stage)`` pairs.

    The list is checked when built: names are unique, each item is a :class:`Stage`, and each
    stage's ``requires`` are produced by an earlier stage.

    Args:
        steps: ``(name, stage)`` pairs in order.

    Raises:
        StageNameNotUniqueError: two stages share a name.
        MissingInputError: a stage needs an artifact type that no earlier stage produces.
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

    @classmethod
    def from_settings(cls, settings: Any, registry: Any) -> Pipeline:
        """The pipeline that ``settings.pipeline`` names, with stages from ``registry``."""
        steps = []
        for kind, name in settings.pipeline.stage_names().items():
            stage_cls = registry.get(kind, name)
            steps.append((stage_cls.default_name, stage_cls()))
        return cls(steps)

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

    def _check_name(self, name: str | None, option: str) -> None:
        if name is not None and name not in self.names:
            raise PipelineDefinitionError(
                f"{option} {name!r}: no such stage; stages: {', '.join(self.names)}"
            )

    def validate(self, settings: Any, *, services: Mapping[str, Any] | None = None) -> None:
        """Run every stage's :meth:`~pcamflow.stages.Stage.validate` without running any.

        The contexts are those of a fresh run (no artifacts of earlier stages), marked
        ``offline``, so that no check reaches the network. This is what ``pcamflow validate``
        does.

        Raises:
            Whatever a stage's ``validate`` raises.
        """
        run_dir = Path(settings.run_dir)
        upstream: dict[str, str] = {}
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
            stage.validate(context)
            upstream[name] = stage.fingerprint(context)

    def run(
        self,
        settings: Any,
        *,
        force: bool = False,
        from_stage: str | None = None,
        only: str | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Run the stages that are not complete, in order, in ``settings.run_dir``.

        Every stage that will run is validated before the first one runs.

        Args:
            settings: the run's settings.
            force: run every stage, complete or not.
            from_stage: run this stage and all after it, complete or not.
            only: run just this stage (its inputs must be complete from an earlier run).
            services: clients and other objects handed to stages through the context.

        Raises:
            Whatever a stage raises; its record says ``failed`` (or ``interrupted`` on Ctrl-C).
        """
        self._check_name(from_stage, "--from")
        self._check_name(only, "--only")
        run_dir = Path(settings.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        records = read_run_record(run_dir)
        services = dict(services or {})
        s3 = services.get("s3")
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
            )

        def recorded(name: str, check_fingerprint: bool = True) -> Artifact | None:
            """The recorded artifact if the stage is complete (same fingerprint, still there)."""
            record = records.get(name)
            if record is None or record.status != "completed" or not record.artifact:
                return None
            if check_fingerprint and record.fingerprint != fingerprints[name]:
                return None
            artifact = record.load_artifact()
            return artifact if artifact is not None and artifact.exists(s3) else None

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

        for name in todo:
            context = context_for(name, artifacts)
            artifacts[name] = self._run_stage(
                name, self[name], context, fingerprints[name], records, run_dir
            )
        return RunResult(run_dir=run_dir, records=dict(records), ran=tuple(todo))

    def _run_stage(
        self,
        name: str,
        stage: Stage,
        context: Context,
        fingerprint: str,
        records: dict[str, StageRecord],
        run_dir: Path,
    ) -> Artifact:
        context.stage_dir.mkdir(parents=True, exist_ok=True)
        started, clock = utc_now(), time.monotonic()
        stage_label = f"{type(stage).__module__}.{type(stage).__qualname__}"
        records[name] = StageRecord(
            name=name, stage=stage_label, status="running", fingerprint=fingerprint, started=started
        )
        write_run_record(run_dir, records, self.names)
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
            )
            write_run_record(run_dir, records, self.names)

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

