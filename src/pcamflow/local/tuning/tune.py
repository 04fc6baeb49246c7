"""One tuning run from settings: open or resume the study, run the trials, write the outputs.

Outputs in the stage folder: ``study.db`` (the study), ``trials.csv`` (one row per trial),
``trials.png`` (objective by trial and best so far), ``best.json`` and ``trials/NNN/`` (each
trial's training output).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
from pathlib import Path
from typing import Any

import attrs
import optuna
from optuna.trial import TrialState

from pcamflow._io import atomic_write
from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.errors import StageError
from pcamflow.local.tuning import storage as _storage
from pcamflow.local.tuning import study as _study
from pcamflow.local.tuning.search import PrunerSpec, grid_size, make_pruner, make_sampler

__all__ = ["tune", "write_outputs"]

log = logging.getLogger("pcamflow")
TRIALS_CSV = "trials.csv"
TRIALS_PNG = "trials.png"
BEST_JSON = "best.json"


def _target(tune: Any) -> int:
    if tune.strategy == "Grid":
        size = grid_size(tune.ranges)
        if size > tune.max_jobs:
            log.warning("tune: the grid has %d points; max_jobs=%d covers only part of it",
                        size, tune.max_jobs)
        return min(size, tune.max_jobs)
    return int(tune.max_jobs)


def _open_study(
    stage_dir: Path, fingerprint: str
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The stage's study and its storage; one made from other settings is set aside, not deleted."""
    db = stage_dir / _storage.DB_FILE
    if db.exists():
        storage = _storage.open_storage(_storage.storage_url(db))
        try:
            old = optuna.load_study(study_name=_storage.STUDY_NAME, storage=storage)
            same = old.user_attrs.get("fingerprint") == fingerprint
        except KeyError:
            same = False
        storage.engine.dispose()
        if not same:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
            kept = db.with_name(f"study-{stamp}.db")
            os.replace(db, kept)
            log.warning("tune: %s was made from other settings; kept as %s, starting afresh",
                        db, kept.name)
    storage = _storage.open_storage(_storage.storage_url(db))
    study = optuna.create_study(study_name=_storage.STUDY_NAME, storage=storage,
                                direction="maximize", load_if_exists=True)
    study.set_user_attr("fingerprint", fingerprint)
    study.set_user_attr("objective", _study.OBJECTIVE)
    return study, storage


def tune(
    settings: Any,
    manifests: Manifests,
    stage_dir: Path,
    *,
    train_fn: _study.TrainFn | None = None,
    progress: bool = True,
) -> TuningResult:
    """Run (or resume) the tuning study that ``settings.tune`` describes.

    Raises:
        StageError: no trial completed, or another process holds the study.
        ConfigError: the warm-start study cannot be read.
    """
    from tqdm.auto import tqdm

    tune_settings = settings.tune
    ranges = dict(tune_settings.ranges)
    base = settings.train.hyperparameters
    if tune_settings.epochs is not None:
        base = base.with_values(epochs=tune_settings.epochs)
    seed = settings.pipeline.seed
    extensions = settings.train.extensions
    parallel = tune_settings.max_parallel_jobs
    if parallel > 1 and extensions.num_workers is None:
        # the cores are shared by the parallel trials: no extra loader processes on top
        cores = max(1, (os.cpu_count() or 1) // parallel)
        extensions = attrs.evolve(extensions, num_workers=max(0, cores - 1))
    train_seed = extensions.seed if extensions.seed is not None else seed
    pruner = PrunerSpec.from_settings(tune_settings.strategy, tune_settings.early_stopping,
                                      base.epochs)
    fingerprint = _study.study_fingerprint({
        "strategy": tune_settings.strategy, "early_stopping": tune_settings.early_stopping,
        "ranges": ranges, "base": base, "extensions": extensions,
        "manifests": manifests.manifests, "seed": seed,
        "warm_start_from": tune_settings.warm_start_from,
    })
    if extensions.cache_dir is None:  # every trial reads (and the first decodes) one cache
        extensions = attrs.evolve(extensions, cache_dir=str(stage_dir / "cache"))
    target = _target(tune_settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _storage.study_lock(stage_dir):
        study, storage = _open_study(stage_dir, fingerprint)
        requeued = _storage.recover_interrupted(study, storage)
        if requeued:
            log.info("tune: %d interrupted trial(s) queued again", requeued)
        if tune_settings.warm_start_from:
            _study.warm_start(study, Path(tune_settings.warm_start_from), ranges)
        trials = study.get_trials(deepcopy=False)
        interrupted = _storage.interrupted_numbers(trials)
        done = sum(1 for t in trials if _study.counted(t, interrupted))
        remaining = max(0, target - done)
        # a fresh seed per resume, so a random sampler does not replay the first run's draws
        study.sampler = make_sampler(tune_settings.strategy, ranges, seed=seed + len(trials),
                                     max_jobs=target, parallel=parallel > 1)
        study.pruner = make_pruner(pruner)
        if done:
            log.info("tune: resuming; %d of %d trials already finished", done, target)
        url = _storage.storage_url(stage_dir / _storage.DB_FILE)

        def make_job(trial: optuna.trial.Trial, trial_id: int) -> _study.TrialJob:
            return _study.TrialJob(
                storage=url, trial_id=trial_id, number=trial.number,
                params=dict(trial.params), ranges=ranges, base=base, extensions=extensions,
                manifests=manifests, out_dir=str(stage_dir / "trials" / f"{trial.number:03d}"),
                seed=train_seed, pruner=pruner,
            )

        bar = tqdm(total=target, initial=min(done, target), desc="tune", unit="trial",
                   disable=None if progress else True)

        def on_done(job: _study.TrialJob, outcome: _study.TrialOutcome) -> None:
            bar.update(1)
            shown = f"{outcome.value:.5f}" if outcome.value is not None else "-"
            log.info("tune: trial %d %s %s=%s %s%s", job.number, outcome.state,
                     _study.OBJECTIVE, shown, outcome.hyperparameters,
                     f" ({outcome.error})" if outcome.error else "")
            write_outputs(study, stage_dir, final=False)

        try:
            _study.execute(study, storage, make_job, remaining, ranges=ranges,
                           parallel=parallel, train_fn=train_fn, on_done=on_done)
        finally:
            bar.close()
        return write_outputs(study, stage_dir)


def _own_best(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if not t.user_attrs.get("warm_start") and t.value is not None]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def write_outputs(study: optuna.Study, stage_dir: Path, *, final: bool = True) -> TuningResult:
    """Write ``trials.csv`` (after each trial) and ``trials.png`` and ``best.json`` (at the end).

    Raises:
        StageError: ``final`` and no trial of this study completed.
    """
    from pcamflow.evaluation.plots import plot_tuning_history

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    interrupted = _storage.interrupted_numbers(study.get_trials(deepcopy=False))
    names = sorted({n for t in trials for n in t.user_attrs.get("hyperparameters", {})}
                   | {n for t in trials for n in t.params})
    path = stage_dir / TRIALS_CSV
    with atomic_write(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", _study.OBJECTIVE, *names, "epochs", "duration_s",
                         "source", "note"])
        for t in trials:
            hp = t.user_attrs.get("hyperparameters", {})
            value = t.value if t.state == TrialState.COMPLETE else (
                t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values
                else None)
            source = "warm start" if t.user_attrs.get("warm_start") else "this study"
            note = t.user_attrs.get("error") or (
                "interrupted; queued again" if t.number in interrupted else "")
            writer.writerow([t.number, t.state.name, "" if value is None else f"{value:.6f}",
                             *(hp.get(n, t.params.get(n, "")) for n in names),
                             t.user_attrs.get("epochs", len(t.intermediate_values)),
                             t.user_attrs.get("duration_s", ""), source, note])
    own = [t for t in trials if not t.user_attrs.get("warm_start")
           and t.number not in interrupted]
    if not final:
        return TuningResult(best_hyperparameters={}, trials=str(path))
    plot_tuning_history(
        stage_dir / TRIALS_PNG,
        [t.value if t.state == TrialState.COMPLETE else (
            t.intermediate_values[max(t.intermediate_values)]
            if t.state == TrialState.PRUNED and t.intermediate_values else None) for t in own],
        objective=_study.OBJECTIVE, states=[t.state.name for t in own],
    )
    best = _own_best(study)
    if best is None:
        errors = {t.user_attrs.get("error") for t in own if t.user_attrs.get("error")}
        raise StageError(
            f"no tuning trial completed (see {path}); "
            + (f"errors: {'; '.join(sorted(errors))[:500]}" if errors else "none ran")
        )
    result = TuningResult(
        best_hyperparameters=dict(best.user_attrs.get("hyperparameters", {})),
        objective=_study.OBJECTIVE, best_value=float(best.value or 0.0), trials=str(path),
    )
    with atomic_write(stage_dir / BEST_JSON, encoding="utf-8") as handle:
        json.dump({"trial": best.number, **result.to_dict(),
                   "archive": best.user_attrs.get("archive"),
                   "metrics": best.user_attrs.get("metrics", {})}, handle, indent=2)
    return result
