"""A tuning study's storage: the SQLite file, heartbeats, recovery after a kill, the lock.

The study lives in ``<stage dir>/study.db``, Optuna's RDB storage on SQLite. A trial that was
running when its process died is failed ("interrupted") and its parameters are queued again by
Optuna's heartbeat mechanism: the tuning process records a heartbeat for each trial it has
started (:class:`Heartbeats`), and the next run calls :func:`optuna.storages.fail_stale_trials`,
which fails the trials whose heartbeat stopped, and the storage's
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback` queues them again
(:func:`recover_interrupted`). A lock file (``filelock``) keeps a second process off a study
in use.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

import filelock
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from pcamflow.errors import StageError

__all__ = [
    "DB_FILE",
    "GRACE_S",
    "HEARTBEAT_S",
    "STUDY_NAME",
    "Heartbeats",
    "interrupted_numbers",
    "open_storage",
    "recover_interrupted",
    "storage_url",
    "study_lock",
    "trial_id_of",
]

log = logging.getLogger("pcamflow")
STUDY_NAME = "pcamflow"
DB_FILE = "study.db"
LOCK_FILE = "study.lock"
HEARTBEAT_S = 1
"""Seconds between the heartbeats of a running trial."""
GRACE_S = 2
"""A running trial whose last heartbeat is older than this (seconds) is stale: its process died."""


def storage_url(db: str | Path) -> str:
    """The SQLAlchemy URL of a SQLite study file."""
    return f"sqlite:///{Path(db).resolve()}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; it waits on SQLite's lock rather than failing.

    A trial whose heartbeat is older than :data:`GRACE_S` is stale; failing it (see
    :func:`recover_interrupted`) queues a copy with its parameters.
    """
    with warnings.catch_warnings():
        # Optuna marks heartbeats and the retry callback experimental; users need not see it
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs={"connect_args": {"timeout": 120}},
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
        )


@contextlib.contextmanager
def study_lock(stage_dir: Path) -> Iterator[None]:
    """Hold ``study.lock`` in ``stage_dir``; a second tuning process on it is refused."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / LOCK_FILE
    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StageError(
            f"{path}: another tuning process is using this study; wait for it or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def trial_id_of(storage: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` (what heartbeats and worker processes need)."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return storage.get_trial_id_from_study_id_trial_number(study_id, number)


class Heartbeats:
    """Records the heartbeat of each trial this process has started, until it is told.

    Optuna records heartbeats only inside ``Study.optimize``; the tuner asks and tells, so it
    records them itself, through the storage's ``record_heartbeat``, on one thread. The tuning
    process beats for the trials its worker processes run as well: a worker exits within a
    second of the tuning process, and a dead worker ends it, so the beat stops when no process
    will report the trial any more. Use as a context manager.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study: optuna.Study) -> None:
        self._storage = storage
        self._study = study
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="pcamflow-heartbeat",
                                        daemon=True)

    def start(self, trial: optuna.trial.Trial) -> int:
        """Record the trial's first heartbeat and keep beating for it; returns its id."""
        trial_id = trial_id_of(self._storage, self._study, trial.number)
        self._storage.record_heartbeat(trial_id)
        with self._lock:
            self._ids.add(trial_id)
        return trial_id

    def stop(self, trial_id: int) -> None:
        """Stop beating for a trial (it has been told)."""
        with self._lock:
            self._ids.discard(trial_id)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                ids = list(self._ids)
            for trial_id in ids:
                try:
                    self._storage.record_heartbeat(trial_id)
                except Exception as error:  # a busy database: the next beat tries again
                    log.debug("tune: heartbeat of trial id %d not recorded: %s", trial_id, error)

    def __enter__(self) -> Heartbeats:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


def recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """Fail the trials a dead process left running and queue their parameters again.

    Call only while holding the study lock, so that no live process owns a running trial.
    Optuna's ``fail_stale_trials`` fails each running trial whose heartbeat is older than
    :data:`GRACE_S`, and the storage's ``RetryHeartbeatStaleTrialCallback`` queues a copy with
    its parameters. Each running trial gets one heartbeat first (a trial cut short before its
    first one has none, and Optuna never finds such a trial stale), so this waits about
    :data:`GRACE_S` seconds, and only when a trial was left running.

    Args:
        study: the study, opened on ``storage``.
        storage: the storage from :func:`open_storage`.

    Returns:
        The number of trials failed and queued again.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    for trial in running:
        storage.record_heartbeat(trial_id_of(storage, study, trial.number))
    # heartbeat times are stored to the second: each trial turns stale within GRACE_S + 1 s;
    # the deadline only guards against a clock that jumps
    deadline = time.monotonic() + 10 * GRACE_S
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        while True:
            optuna.storages.fail_stale_trials(study)
            left = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    if left:
        log.warning("tune: %d trial(s) left running by an earlier run could not be failed",
                    len(left))
    return len(running) - len(left)


def interrupted_numbers(trials: Iterable[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials failed because their process died.

    Their retries name them (``RetryHeartbeatStaleTrialCallback.retry_history``); studies
    written before heartbeats were used marked them with the user attribute ``interrupted``.
    """
    trials = list(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        numbers = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return numbers | {t.number for t in trials if t.user_attrs.get("interrupted")}
