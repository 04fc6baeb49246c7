"""Stand-ins for ``train_model`` in the tuner's tests: instant, deterministic, and observable.

Each call appends its hyperparameters to ``calls.log`` in the tuning stage folder (the trial
folder's grandparent). A file ``hang_at`` there holding N (or N,M,...) makes the N-th call hang
(after touching ``hanging-N``), so a test can kill the process in the middle of a trial.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace


def _stage(out_dir: Path) -> Path:
    return Path(out_dir).parent.parent


def score_of(hp) -> float:
    """A smooth objective with its peak at learning_rate=0.01 and a bonus for adam."""
    peak = math.exp(-((math.log10(hp.learning_rate) + 2) ** 2))
    return 0.5 + 0.4 * peak + (0.05 if hp.optimizer == "adam" else 0.0)


def _log_call(out_dir: Path, hp) -> int:
    stage = _stage(out_dir)
    call = {"trial": Path(out_dir).name, "learning_rate": hp.learning_rate,
            "optimizer": hp.optimizer, "mini_batch_size": hp.mini_batch_size,
            "epochs": hp.epochs}
    with open(stage / "calls.log", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(call) + "\n")
    return len((stage / "calls.log").read_text().splitlines())


def _finish(out_dir: Path, value: float) -> SimpleNamespace:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "model.tar.gz"
    archive.write_bytes(b"not a real archive")
    return SimpleNamespace(archive=archive, history=[],
                           metrics={"validation:accuracy": value, "train:accuracy": value})


def fake_train(manifests, hyperparameters, extensions, out_dir, *, seed=0,
               epoch_callback=None, progress=True):
    """Report a rising objective each epoch, ending at :func:`score_of`."""
    calls = _log_call(out_dir, hyperparameters)
    hang = _stage(out_dir) / "hang_at"
    if hang.exists() and calls in {int(n) for n in hang.read_text().split(",")}:
        (_stage(out_dir) / f"hanging-{calls}").touch()
        time.sleep(600)
    final = score_of(hyperparameters)
    epochs = hyperparameters.epochs
    for epoch in range(epochs):
        if epoch_callback is not None:
            epoch_callback(epoch, {"validation:accuracy": final * (epoch + 1) / epochs})
    return _finish(out_dir, final)


def by_trial_number(manifests, hyperparameters, extensions, out_dir, *, seed=0,
                    epoch_callback=None, progress=True):
    """Each later trial is worse at every epoch (trial 0 best), to make pruning certain.

    Every epoch it reports is logged to ``reported.log`` (trial, epoch) before the report.
    """
    _log_call(out_dir, hyperparameters)
    value = 0.9 - 0.1 * int(Path(out_dir).name)
    for epoch in range(hyperparameters.epochs):
        with open(_stage(out_dir) / "reported.log", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"trial": Path(out_dir).name, "epoch": epoch}) + "\n")
        if epoch_callback is not None:
            epoch_callback(epoch, {"validation:accuracy": value})
    return _finish(out_dir, value)


def in_parallel(manifests, hyperparameters, extensions, out_dir, *, seed=0,
                epoch_callback=None, progress=True):
    """Like :func:`fake_train`, and logs its process id and whether another trial was running.

    A trial marks itself running, then waits (up to 30 s) for another trial's mark: trials that
    run one after another never see one, so ``overlapped`` is false for the first of them.
    """
    import os

    stage = _stage(out_dir)
    mine = stage / f"running-{Path(out_dir).name}"
    mine.touch()
    deadline = time.monotonic() + 30
    while not (overlapped := any(p != mine for p in stage.glob("running-*"))):
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    with open(stage / "workers.log", "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"pid": os.getpid(), "overlapped": overlapped}) + "\n")
    result = fake_train(manifests, hyperparameters, extensions, out_dir, seed=seed,
                        epoch_callback=epoch_callback, progress=progress)
    time.sleep(0.1)  # the next trial sees this one still running
    mine.unlink()
    return result


def failing_for_sgd(manifests, hyperparameters, extensions, out_dir, *, seed=0,
                    epoch_callback=None, progress=True):
    """Diverge (a pcamflow error) whenever the optimizer is sgd."""
    from pcamflow.errors import DivergedError

    _log_call(out_dir, hyperparameters)
    if hyperparameters.optimizer == "sgd":
        raise DivergedError("the loss became NaN at epoch 0")
    return _finish(out_dir, score_of(hyperparameters))


def outlives_the_grace_period(manifests, hyperparameters, extensions, out_dir, *, seed=0,
                              epoch_callback=None, progress=True):
    """Run past the heartbeat grace period, then have Optuna fail the study's stale trials.

    Its own trial is running all the while; it must not be taken for stale.
    """
    import warnings

    import optuna

    from pcamflow.local.tuning.storage import (
        DB_FILE,
        GRACE_S,
        STUDY_NAME,
        open_storage,
        storage_url,
    )

    _log_call(out_dir, hyperparameters)
    time.sleep(GRACE_S + 2.5)
    storage = open_storage(storage_url(_stage(out_dir) / DB_FILE))
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    storage.engine.dispose()
    return _finish(out_dir, score_of(hyperparameters))
