"""The local tuner: strategies, pruning, parallel trials, warm start, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _tuner_fakes import (
    by_trial_number,
    failing_for_sgd,
    fake_train,
    in_parallel,
    outlives_the_grace_period,
)

from pcamflow.artifacts import Manifests, TuningResult
from pcamflow.config import Settings
from pcamflow.errors import ConfigError, StageError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.local.tuning.tuner import LocalTuner
from pcamflow.stages import Context

HERE = Path(__file__).parent
LR = {"type": "continuous", "min_value": 0.0001, "max_value": 0.5, "scaling": "Logarithmic"}
OPT = {"type": "categorical", "values": ["sgd", "adam"]}
FAKE_DATA = Manifests(manifests={"train": "train.manifest", "valid": "valid.manifest"})


def make_settings(run_dir: Path, tune: dict, train: dict | None = None) -> Settings:
    return Settings.from_dict({
        "pipeline": {"run_dir": str(run_dir), "tuner": "local"},
        "train": {"num_layers": 20, "epochs": 3, **(train or {})},
        "tune": tune,
    })


def context(settings: Settings, manifests: Manifests = FAKE_DATA, name: str = "tune") -> Context:
    return Context(settings=settings, run_dir=settings.run_dir,
                   stage_dir=settings.run_dir / name, artifacts={"manifests": manifests},
                   stage_name=name)


def rows(stage_dir: Path) -> list[dict[str, str]]:
    with open(stage_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def calls(stage_dir: Path) -> list[dict]:
    path = stage_dir / "calls.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_tuner(settings: Settings, train_fn=fake_train, manifests: Manifests = FAKE_DATA,
              name: str = "tune") -> TuningResult:
    stage = LocalTuner(train_fn, progress=False)
    ctx = context(settings, manifests, name)
    stage.validate(ctx)
    return stage.run(ctx)


def test_random_search_returns_the_best_trial_as_algorithm_strings(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": 4,
                                        "ranges": {"learning_rate": LR, "optimizer": OPT}})
    result = run_tuner(settings)

    stage = tmp_path / "tune"
    table = rows(stage)
    assert [r["state"] for r in table] == ["COMPLETE"] * 4
    assert len(calls(stage)) == 4
    best_row = max(table, key=lambda r: float(r["validation:accuracy"]))
    assert result.best_value == pytest.approx(float(best_row["validation:accuracy"]), abs=1e-6)
    assert set(result.best_hyperparameters) == {"learning_rate", "optimizer"}
    assert result.best_hyperparameters["optimizer"] == best_row["optimizer"]
    # the strings are the algorithm's: they parse back into valid hyperparameters
    tuned = Hyperparameters().with_values(**result.best_hyperparameters)
    assert tuned.learning_rate == pytest.approx(float(best_row["learning_rate"]))
    assert (stage / "trials.png").stat().st_size > 0
    assert result.trials == str(stage / "trials.csv")
    assert json.loads((stage / "best.json").read_text())["best_value"] == result.best_value


def test_each_trial_trains_with_the_tune_epochs(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Bayesian", "max_jobs": 3, "epochs": 2,
                                        "ranges": {"learning_rate": LR}})
    result = run_tuner(settings)
    assert {c["epochs"] for c in calls(tmp_path / "tune")} == {2}
    assert "epochs" not in result.best_hyperparameters  # the final training keeps [train]


def test_grid_runs_every_point_once(tmp_path):
    ranges = {"optimizer": OPT,
              "mini_batch_size": {"type": "integer", "min_value": 16, "max_value": 17}}
    settings = make_settings(tmp_path, {"strategy": "Grid", "max_jobs": 10, "ranges": ranges})
    run_tuner(settings)
    points = sorted((c["optimizer"], c["mini_batch_size"]) for c in calls(tmp_path / "tune"))
    assert points == [("adam", 16), ("adam", 17), ("sgd", 16), ("sgd", 17)]


def test_early_stopping_auto_prunes_trials_below_the_median(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": 4,
                                        "early_stopping": "Auto", "ranges": {"learning_rate": LR}},
                             train={"epochs": 4})
    result = run_tuner(settings, by_trial_number)
    table = rows(tmp_path / "tune")
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [int(r["epochs"]) for r in table] == [4, 4, 2, 2]  # stopped after epoch 2 of 4
    assert result.best_value == pytest.approx(0.9)


def test_hyperband_reports_every_epoch_and_finishes(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Hyperband", "max_jobs": 5,
                                        "ranges": {"learning_rate": LR, "optimizer": OPT}},
                             train={"epochs": 4})
    result = run_tuner(settings, by_trial_number)
    table = rows(tmp_path / "tune")
    assert len(table) == 5
    states = [r["state"] for r in table]
    assert set(states) == {"COMPLETE", "PRUNED"}  # Hyperband stopped some trials early
    reported = [json.loads(line)
                for line in (tmp_path / "tune" / "reported.log").read_text().splitlines()]
    for row in table:
        epochs = [r["epoch"] for r in reported if int(r["trial"]) == int(row["trial"])]
        # every epoch up to where the trial stopped was reported, in order, none skipped
        assert epochs == list(range(int(row["epochs"])))
        if row["state"] == "COMPLETE":
            assert epochs == [0, 1, 2, 3]
        else:
            assert len(epochs) < 4
            assert row["note"].startswith(f"pruned after epoch {epochs[-1]} ")
    assert result.best_value == pytest.approx(0.9)


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Grid", "max_jobs": 2,
                                        "ranges": {"optimizer": OPT}})
    result = run_tuner(settings, failing_for_sgd)
    table = {r["optimizer"]: r for r in rows(tmp_path / "tune")}
    assert table["sgd"]["state"] == "FAIL"
    assert "DivergedError" in table["sgd"]["note"]
    assert result.best_hyperparameters == {"optimizer": "adam"}


def test_no_completed_trial_is_a_stage_error(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": 2,
                                        "ranges": {"optimizer": {"type": "categorical",
                                                                 "values": ["sgd"]}}})
    with pytest.raises(StageError, match=r"no tuning trial completed.*DivergedError"):
        run_tuner(settings, failing_for_sgd)
    assert len(rows(tmp_path / "tune")) == 2  # the table is written all the same


def test_parallel_trials_run_in_worker_processes(tmp_path):
    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": 4,
                                        "max_parallel_jobs": 2,
                                        "ranges": {"learning_rate": LR, "optimizer": OPT}})
    result = run_tuner(settings, in_parallel)
    made = calls(tmp_path / "tune")
    assert len(made) == 4
    assert len({(c["learning_rate"], c["optimizer"]) for c in made}) == 4
    assert [r["state"] for r in rows(tmp_path / "tune")] == ["COMPLETE"] * 4
    workers = [json.loads(line)
               for line in (tmp_path / "tune" / "workers.log").read_text().splitlines()]
    pids = {w["pid"] for w in workers}
    assert os.getpid() not in pids and len(pids) == 2  # two worker processes, not this one
    assert all(w["overlapped"] for w in workers)  # each trial ran beside another
    assert result.best_value is not None


def test_warm_start_uses_an_earlier_study_without_counting_it(tmp_path):
    ranges = {"learning_rate": LR, "optimizer": OPT}
    first = make_settings(tmp_path / "a", {"strategy": "Random", "max_jobs": 3, "ranges": ranges})
    run_tuner(first)
    second = make_settings(tmp_path / "b", {"strategy": "Bayesian", "max_jobs": 2,
                                            "warm_start_from": str(tmp_path / "a" / "tune"),
                                            "ranges": ranges})
    result = run_tuner(second)
    table = rows(tmp_path / "b" / "tune")
    assert [r["source"] for r in table].count("warm start") == 3
    assert [r["source"] for r in table].count("this study") == 2
    assert len(calls(tmp_path / "b" / "tune")) == 2
    own = [float(r["validation:accuracy"]) for r in table if r["source"] == "this study"]
    assert result.best_value == pytest.approx(max(own), abs=1e-6)


def test_changed_ranges_start_a_new_study_and_keep_the_old_one(tmp_path):
    run_tuner(make_settings(tmp_path, {"strategy": "Random", "max_jobs": 2,
                                       "ranges": {"learning_rate": LR}}))
    run_tuner(make_settings(tmp_path, {"strategy": "Random", "max_jobs": 2,
                                       "ranges": {"optimizer": OPT}}))
    stage = tmp_path / "tune"
    assert len(list(stage.glob("study-*.db"))) == 1
    assert [set(r) & {"learning_rate", "optimizer"} for r in rows(stage)] == [{"optimizer"}] * 2


def test_more_max_jobs_continues_the_same_study(tmp_path):
    ranges = {"learning_rate": LR}
    run_tuner(make_settings(tmp_path, {"strategy": "Random", "max_jobs": 2, "ranges": ranges}))
    run_tuner(make_settings(tmp_path, {"strategy": "Random", "max_jobs": 3, "ranges": ranges}))
    assert len(calls(tmp_path / "tune")) == 3
    assert len({c["learning_rate"] for c in calls(tmp_path / "tune")}) == 3



def _wait_for(process: subprocess.Popen, files: list[Path], what: str,
              seconds: float = 300) -> None:
    """Wait until every file of ``files`` exists while ``process`` runs. On a busy machine the
    spawned workers take long to import torch: the limit is generous, and a process that
    misses it is stopped and its output shown, with the stage folder's files."""
    deadline = time.monotonic() + seconds
    while not all(f.exists() for f in files):
        assert process.poll() is None, process.stderr.read().decode()
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            there = sorted(p.name for p in files[0].parent.iterdir())
            raise AssertionError(f"{what} in {seconds:.0f} s; in the stage folder: {there}; "
                                 f"the process said:\n{process.stderr.read().decode()[-3000:]}")
        time.sleep(0.1)


def test_a_killed_run_resumes_without_repeating_finished_trials(tmp_path):
    stage = tmp_path / "tune"
    stage.mkdir()
    (stage / "hang_at").write_text("3")  # the third trial hangs; the process is killed in it
    tune = {"strategy": "Random", "max_jobs": 4, "ranges": {"learning_rate": LR, "optimizer": OPT}}
    script = tmp_path / "tune_once.py"
    script.write_text(textwrap.dedent(f"""
        from test_tuner import make_settings, run_tuner
        from pathlib import Path
        run_tuner(make_settings(Path({str(tmp_path)!r}), {tune!r}))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    process = subprocess.Popen([sys.executable, str(script)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(process, [stage / "hanging-3"], "the tuning process never reached trial 3")
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    before = calls(stage)
    assert len(before) == 3

    (stage / "hang_at").unlink()
    result = run_tuner(make_settings(tmp_path, tune))

    after = calls(stage)[3:]
    key = lambda c: (c["learning_rate"], c["optimizer"])  # noqa: E731
    assert len(after) == 2  # the interrupted trial again, and the one never started
    assert key(after[0]) == key(before[2])  # the interrupted trial's parameters are retried
    assert {key(c) for c in before[:2]}.isdisjoint(key(c) for c in after)
    table = rows(stage)
    assert [r["state"] for r in table].count("COMPLETE") == 4
    assert [r["note"] for r in table].count("interrupted; queued again") == 1
    best = max(float(r["validation:accuracy"]) for r in table if r["state"] == "COMPLETE")
    assert result.best_value == pytest.approx(best, abs=1e-6)


def test_a_killed_parallel_run_retries_the_trials_its_workers_were_running(tmp_path):
    stage = tmp_path / "tune"
    stage.mkdir()
    (stage / "hang_at").write_text("1,2")  # both workers hang in their first trial
    tune = {"strategy": "Random", "max_jobs": 3, "max_parallel_jobs": 2,
            "ranges": {"learning_rate": LR, "optimizer": OPT}}
    script = tmp_path / "tune_once.py"
    script.write_text(textwrap.dedent(f"""
        from test_tuner import make_settings, run_tuner
        from pathlib import Path
        if __name__ == "__main__":  # the workers are spawned: they import this script
            run_tuner(make_settings(Path({str(tmp_path)!r}), {tune!r}))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    process = subprocess.Popen([sys.executable, str(script)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(process, [stage / "hanging-1", stage / "hanging-2"],
                  "the workers never started their trials")
        process.send_signal(signal.SIGKILL)  # its workers exit on their own
    finally:
        process.wait(timeout=30)
        process.stderr.close()
    before = calls(stage)
    assert len(before) == 2

    (stage / "hang_at").unlink()
    run_tuner(make_settings(tmp_path, tune))

    after = calls(stage)[2:]
    key = lambda c: (c["learning_rate"], c["optimizer"])  # noqa: E731
    assert len(after) == 3  # both interrupted trials again, and the one never started
    # the retries start first, but a new trial may log its call before the second retry does
    assert {key(c) for c in before} < {key(c) for c in after}
    table = rows(stage)
    assert [r["state"] for r in table].count("COMPLETE") == 3
    assert [r["note"] for r in table].count("interrupted; queued again") == 2


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_running_trial_keeps_its_heartbeat_past_the_grace_period(tmp_path, parallel):
    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": parallel,
                                        "max_parallel_jobs": parallel,
                                        "ranges": {"learning_rate": LR}})
    run_tuner(settings, train_fn=outlives_the_grace_period)
    table = rows(tmp_path / "tune")
    # a trial failed as stale could not be told COMPLETE, and its retry would show up here
    assert [r["state"] for r in table] == ["COMPLETE"] * parallel
    assert len(calls(tmp_path / "tune")) == parallel


def test_a_second_process_on_the_same_study_is_refused(tmp_path):
    from pcamflow.local.tuning.storage import study_lock

    settings = make_settings(tmp_path, {"strategy": "Random", "max_jobs": 1,
                                        "ranges": {"learning_rate": LR}})
    with study_lock(tmp_path / "tune"), pytest.raises(StageError, match="another tuning"):
        run_tuner(settings)


# --- checks before any trial ---------------------------------------------------------------


def test_validate_wants_ranges(tmp_path):
    with pytest.raises(ConfigError, match=r"tune\.ranges: no hyperparameter ranges"):
        run_tuner(make_settings(tmp_path, {"strategy": "Random"}))


def test_validate_wants_an_existing_warm_start_study(tmp_path):
    settings = make_settings(tmp_path, {"warm_start_from": str(tmp_path / "nowhere"),
                                        "ranges": {"learning_rate": LR}})
    with pytest.raises(ConfigError, match=r"warm_start_from: .*nowhere holds no study\.db"):
        run_tuner(settings)


def test_validate_rejects_tune_epochs_that_break_the_train_settings(tmp_path):
    settings = make_settings(tmp_path, {"epochs": 2, "ranges": {"learning_rate": LR}},
                             train={"epochs": 10, "checkpoint_frequency": 5})
    with pytest.raises(ConfigError, match=r"tune\.epochs: 2 does not fit"):
        run_tuner(settings)
    assert not (tmp_path / "tune" / "calls.log").exists()


def test_validate_rejects_a_huge_grid(tmp_path):
    ranges = {"mini_batch_size": {"type": "integer", "min_value": 1, "max_value": 500},
              "epochs": {"type": "integer", "min_value": 1, "max_value": 100}}
    with pytest.raises(ConfigError, match=r"the grid has 50000 points"):
        run_tuner(make_settings(tmp_path, {"strategy": "Grid", "ranges": ranges}))


# --- bad input in the settings (issue: tuning ranges) ---------------------------------------


@pytest.mark.parametrize(("tune", "pattern"), [
    ({"ranges": {"learning_rate": {"type": "continuous", "min_value": 0.5, "max_value": 0.1}}},
     "tune.ranges.learning_rate.min_value: 0.5 is greater than max_value 0.1"),
    ({"ranges": {"optimizer": {"type": "categorical", "values": ["sgd", "adamw"]}}},
     "tune.ranges.optimizer: range value 'adamw' is invalid"),
    ({"strategy": "Grid", "ranges": {"learning_rate": LR}},
     "tune.ranges.learning_rate: the Grid strategy takes only integer and categorical ranges"),
    ({"max_jobs": 2, "max_parallel_jobs": 3},
     r"tune\.max_parallel_jobs: 3 is greater than max_jobs \(2\)"),
    ({"ranges": {"dropout": LR}}, "tune.ranges.dropout: not a hyperparameter"),
    ({"ranges": {"momentum": {"type": "continuous", "min_value": 0.5, "max_value": 1.5}}},
     "tune.ranges.momentum: range value 1.5 is invalid"),
    ({"ranges": {"num_layers": {"type": "integer", "min_value": 18, "max_value": 34}}},
     r"tune\.ranges\.num_layers: range value 19 is invalid .*use a categorical range"),
    ({"ranges": {"epochs": {"type": "integer", "min_value": 1, "max_value": 9,
                            "scaling": "ReverseLogarithmic"}}},
     "ReverseLogarithmic is for continuous ranges only"),
    ({"strategy": "Hyperband", "early_stopping": "Auto", "ranges": {"learning_rate": LR}},
     "tune.early_stopping: must be Off with the Hyperband strategy"),
])
def test_bad_tuning_settings_are_refused_with_the_key(tune, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern):
        make_settings(tmp_path, tune)


# --- with the real trainer -------------------------------------------------------------------


def test_trials_train_real_models_on_tiny_data(tmp_path, small_pcam):
    import torch

    from pcamflow.local.model.archive import load_model_archive

    manifests, _ = small_pcam
    settings = Settings.from_dict({
        "pipeline": {"run_dir": str(tmp_path), "tuner": "local"},
        # 32x32 inputs and one epoch keep each trial to seconds on a CPU
        "train": {"num_layers": 20, "epochs": 1, "mini_batch_size": 32,
                  "image_shape": "3,32,32", "resize": 32, "num_training_samples": 64,
                  "extensions": {"num_workers": 0, "device": "cpu"}},
        "tune": {"strategy": "Random", "max_jobs": 2,
                 "ranges": {"learning_rate": {"type": "continuous", "min_value": 0.01,
                                              "max_value": 0.2}}},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_tuner(settings, None, manifests)
    finally:
        torch.set_num_threads(threads)

    table = rows(tmp_path / "tune")
    assert [r["state"] for r in table] == ["COMPLETE", "COMPLETE"]
    best = json.loads((tmp_path / "tune" / "best.json").read_text())
    model = load_model_archive(best["archive"])
    assert model.meta.hyperparameters["learning_rate"] == result.best_hyperparameters[
        "learning_rate"]
    assert 0.0 <= result.best_value <= 1.0
