"""The study's storage: heartbeats, recovery of trials a dead process left running, the lock."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from pcamflow.errors import StageError
from pcamflow.local.tuning.storage import (
    STUDY_NAME,
    interrupted_numbers,
    open_storage,
    recover_interrupted,
    storage_url,
    study_lock,
)

DISTS = {"learning_rate": FloatDistribution(1e-4, 0.5, log=True),
         "optimizer": CategoricalDistribution(["sgd", "adam"])}


def _study(path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = open_storage(storage_url(path / "study.db"))
    study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize")
    return study, storage


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_trial_left_running_without_a_heartbeat_is_failed_and_queued_again(tmp_path):
    study, storage = _study(tmp_path)
    study.tell(study.ask(DISTS), 0.5)
    left = study.ask(DISTS)  # its process "dies" before the trial's first heartbeat
    assert recover_interrupted(study, storage) == 1

    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].params == left.params
    assert interrupted_numbers(trials) == {left.number}
    # the queued copy is what the next ask runs
    assert study.ask(DISTS).params == left.params
    storage.engine.dispose()


def test_nothing_left_running_recovers_nothing(tmp_path):
    study, storage = _study(tmp_path)
    assert recover_interrupted(study, storage) == 0
    assert interrupted_numbers(study.get_trials()) == set()
    storage.engine.dispose()


def test_a_second_process_on_the_study_is_refused_at_once(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            from pcamflow.local.tuning.storage import study_lock
            with study_lock(Path({str(tmp_path)!r})):
                print("held", flush=True)
                time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StageError, match=r"study\.lock: another tuning process"), \
                study_lock(tmp_path):
            pass
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with study_lock(tmp_path):  # free again once the holder is gone
        pass
