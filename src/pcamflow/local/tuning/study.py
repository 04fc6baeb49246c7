"""Running a tuning study: SQLite storage in the stage folder, resume, parallel trials.

The study lives in ``<stage dir>/study.db`` (Optuna's RDB storage on SQLite; see
:mod:`pcamflow.local.tuning.storage`). Every trial's state, parameters and per-epoch objective
are written there as they happen, so a run that is killed resumes where it stopped: finished
trials (complete, pruned or failed) are kept and counted, and a trial that was running when
the process died is failed ("interrupted") and its parameters are queued again.

Trials run in this process when ``max_parallel_jobs`` is 1, and otherwise in that many worker
processes (spawned, each with ``cores / max_parallel_jobs`` PyTorch threads), which report
each epoch to the shared storage so the pruners see every trial.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import attrs
import optuna
from optuna.trial import TrialState

from pcamflow._io import digest
from pcamflow.artifacts import Manifests
from pcamflow.errors import ConfigError, PcamflowError
from pcamflow.hyperparameters import Hyperparameters, LocalExtensions
from pcamflow.local.tuning.search import (
    PrunerSpec,
    algorithm_strings,
    apply_params,
    distributions,
    make_pruner,
)
from pcamflow.local.tuning.storage import DB_FILE, STUDY_NAME, Heartbeats, open_storage, storage_url
from pcamflow.tuning_ranges import TuningRange

__all__ = ["OBJECTIVE", "TrialJob", "TrialOutcome", "run_trial"]

log = logging.getLogger("pcamflow")
OBJECTIVE = "validation:accuracy"
TrainFn = Callable[..., Any]


@attrs.frozen
class TrialJob:
    """What one trial needs; picklable, so a worker process can run it.

    Attributes:
        storage: the study's storage URL.
        trial_id: Optuna's trial id (for reporting epochs).
        number: the trial's number in the study.
        params: the sampled parameters (Optuna's values).
        ranges: the tuning ranges.
        base: the hyperparameters the ranges change.
        extensions: the local extensions to train with.
        manifests: the data.
        out_dir: the trial's folder.
        seed: the training seed (the same for every trial, so trials differ only by their
            hyperparameters).
        pruner: how the trial may be stopped early.
    """

    storage: str
    trial_id: int
    number: int
    params: dict[str, Any]
    ranges: dict[str, TuningRange]
    base: Hyperparameters
    extensions: LocalExtensions
    manifests: Manifests
    out_dir: str
    seed: int
    pruner: PrunerSpec


@attrs.frozen
class TrialOutcome:
    """How a trial ended.

    Attributes:
        state: ``COMPLETE``, ``PRUNED`` or ``FAIL``.
        value: the objective (final for complete trials, last reported for pruned ones).
        hyperparameters: the tuned hyperparameters, as the algorithm's strings.
        metrics: the final metrics of a complete trial.
        archive: the trial's model archive, for a complete trial.
        error: why a trial failed or was pruned.
        epochs: epochs run.
        duration_s: seconds the trial took.
    """

    state: str
    value: float | None = None
    hyperparameters: dict[str, str] = attrs.field(factory=dict)
    metrics: dict[str, float] = attrs.field(factory=dict)
    archive: str | None = None
    error: str | None = None
    epochs: int = 0
    duration_s: float = 0.0


def run_trial(
    job: TrialJob, train_fn: TrainFn | None = None, study: optuna.Study | None = None
) -> TrialOutcome:
    """Train one trial, reporting each epoch's objective to the study (pruning it if asked).

    A pcamflow error (invalid hyperparameter combination, diverged training, ...) fails the
    trial, as it would fail a SageMaker training job, and the study goes on.

    Args:
        job: the trial.
        train_fn: the training function (None: :func:`pcamflow.local.training.trainer.train_model`).
        study: the open study, in this process (None: opened from ``job.storage``).
    """
    if train_fn is None:
        from pcamflow.local.training.trainer import train_model

        train_fn = train_model
    started = time.monotonic()
    if study is None:
        study = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(job.storage),
                                  pruner=make_pruner(job.pruner))
    trial = optuna.trial.Trial(study, job.trial_id)
    seen: dict[str, Any] = {"epochs": 0, "last": None}

    def on_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
        value = metrics.get(OBJECTIVE)
        seen["epochs"] += 1
        if value is None:
            return
        seen["last"] = float(value)
        # the step is the number of epochs done (the trainer counts epochs from 0), which is
        # the resource Hyperband allots
        trial.report(float(value), step=int(epoch) + 1)
        if job.pruner.kind != "none" and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({OBJECTIVE}={value:.5f})")

    def done(state: str, **kwargs: Any) -> TrialOutcome:
        return TrialOutcome(state=state, epochs=seen["epochs"],
                            duration_s=round(time.monotonic() - started, 3), **kwargs)

    try:
        hyperparameters = apply_params(job.base, job.ranges, job.params)
    except PcamflowError as error:
        return done("FAIL", error=f"{type(error).__name__}: {error}")
    strings = algorithm_strings(hyperparameters, job.ranges)
    try:
        result = train_fn(
            job.manifests, hyperparameters, job.extensions, Path(job.out_dir),
            seed=job.seed, epoch_callback=on_epoch, progress=False,
        )
    except optuna.TrialPruned as pruned:
        return done("PRUNED", value=seen["last"], hyperparameters=strings, error=str(pruned))
    except PcamflowError as error:
        return done("FAIL", hyperparameters=strings, error=f"{type(error).__name__}: {error}")
    metrics = {k: float(v) for k, v in dict(result.metrics).items()}
    if OBJECTIVE not in metrics:
        return done("FAIL", hyperparameters=strings,
                    error=f"training reported no {OBJECTIVE} (metrics: {sorted(metrics)})")
    return done("COMPLETE", value=metrics[OBJECTIVE], hyperparameters=strings,
                metrics=metrics, archive=str(result.archive))


# --- worker processes -------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:  # the tuning process died: do not train on as an orphan
            os._exit(1)
        time.sleep(1.0)


def _init_worker(parent: int, threads: int) -> None:
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    # set before PyTorch loads in this fresh (spawned) process: the cores are shared
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def study_fingerprint(payload: Mapping[str, Any]) -> str:
    """A digest of what makes finished trials comparable (ranges, data, base settings)."""
    return digest(dict(payload))


def counted(trial: optuna.trial.FrozenTrial, interrupted: set[int]) -> bool:
    """Whether a trial counts toward ``max_jobs`` (finished here, not ``interrupted``)."""
    if trial.user_attrs.get("warm_start") or trial.number in interrupted:
        return False
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def warm_start(study: optuna.Study, parent: Path, ranges: Mapping[str, TuningRange]) -> int:
    """Copy the complete trials of the study at ``parent`` into ``study`` (once).

    Trials whose parameters fall outside the current ranges are left out. They inform the
    sampler but do not count toward ``max_jobs``, as with SageMaker's warm start.

    Raises:
        ConfigError: ``parent`` holds no readable study.
    """
    if study.user_attrs.get("warm_started_from"):
        return 0
    db = parent / DB_FILE if parent.is_dir() else parent
    if not db.is_file():
        raise ConfigError(f"tune.warm_start_from: {parent} holds no {DB_FILE} of an earlier study")
    try:
        earlier = optuna.load_study(study_name=STUDY_NAME, storage=open_storage(storage_url(db)))
        trials = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    except Exception as error:  # sqlalchemy/optuna raise their own kinds for a bad file
        raise ConfigError(
            f"tune.warm_start_from: {db} is not a readable pcamflow study ({error})"
        ) from None
    dists = distributions(ranges)
    added = []
    for old in trials:
        if set(old.params) != set(dists):
            continue
        try:
            added.append(optuna.trial.create_trial(
                params=dict(old.params), distributions=dists, value=old.value,
                intermediate_values=dict(old.intermediate_values),
                user_attrs={**old.user_attrs, "warm_start": str(db), "parent_number": old.number},
            ))
        except ValueError:  # a parameter outside today's ranges
            continue
    study.add_trials(added)
    study.set_user_attr("warm_started_from", str(db))
    log.info("tune: warm start from %s: %d of %d trials fit the ranges", db, len(added),
             len(trials))
    return len(added)


def record(trial: optuna.trial.Trial, study: optuna.Study, outcome: TrialOutcome) -> None:
    """Write a trial's outcome to the study."""
    for key, value in (
        ("hyperparameters", outcome.hyperparameters), ("metrics", outcome.metrics),
        ("archive", outcome.archive), ("error", outcome.error), ("epochs", outcome.epochs),
        ("duration_s", outcome.duration_s),
    ):
        if value not in (None, {}):
            trial.set_user_attr(key, value)
    if outcome.state == "COMPLETE":
        study.tell(trial, outcome.value)
    elif outcome.state == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _ask(study: optuna.Study, dists: Mapping[str, Any]) -> optuna.trial.Trial:
    with warnings.catch_warnings():
        # Optuna warns that its heartbeats are meant for optimize(); Heartbeats records them
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        return study.ask(dict(dists))


def execute(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    make_job: Callable[[optuna.trial.Trial, int], TrialJob],
    remaining: int,
    *,
    ranges: Mapping[str, TuningRange],
    parallel: int,
    train_fn: TrainFn | None,
    on_done: Callable[[TrialJob, TrialOutcome], None],
) -> None:
    """Run ``remaining`` trials, ``parallel`` at a time, recording their heartbeats.

    ``make_job`` gets each asked trial and its storage id. A trial cut short by an exception
    (Ctrl-C, a crash) or a kill stays ``RUNNING`` in the storage, its heartbeat stopped; the
    next run fails it and tries its parameters again (:func:`recover_interrupted`).
    """
    dists = distributions(ranges)
    with Heartbeats(storage, study) as heartbeats:
        if parallel <= 1:
            for _ in range(remaining):
                trial = _ask(study, dists)
                job = make_job(trial, heartbeats.start(trial))
                outcome = run_trial(job, train_fn, study)
                record(trial, study, outcome)
                heartbeats.stop(job.trial_id)
                on_done(job, outcome)
            return
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // parallel)
        context = multiprocessing.get_context("spawn")
        running: dict[Future[TrialOutcome], tuple[optuna.trial.Trial, TrialJob]] = {}
        started = 0
        with ProcessPoolExecutor(parallel, mp_context=context, initializer=_init_worker,
                                 initargs=(os.getpid(), threads)) as pool:
            try:
                while started < remaining or running:
                    while started < remaining and len(running) < parallel:
                        trial = _ask(study, dists)
                        job = make_job(trial, heartbeats.start(trial))
                        running[pool.submit(run_trial, job, train_fn)] = (trial, job)
                        started += 1
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                    for future in finished:
                        trial, job = running.pop(future)
                        record(trial, study, future.result())
                        heartbeats.stop(job.trial_id)
                        on_done(job, future.result())
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
