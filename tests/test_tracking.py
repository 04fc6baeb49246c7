"""Experiment tracking: runs logged to a real MLflow file store and read back with MlflowClient.

The whole-run test reads the MLflow run of the ``full_run`` fixture (tests/conftest.py), which
``pcamflow run`` logged because its settings have a ``[tracking]`` table. Expected values come
from the run folder: run.json's artifacts, the trainer's history.json, the tuner's trials.csv.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from _stages import calls, pipeline
from pcamflow import Settings
from pcamflow.config import TrackingSettings
from pcamflow.errors import TrackingError
from pcamflow.pipeline import read_run_record
from pcamflow.tracking import MlflowTracker, metric_name

needs_mlflow = pytest.mark.skipif(
    importlib.util.find_spec("mlflow") is None,
    reason="needs the 'mlflow' extra: pip install 'pcamflow[mlflow]'",
)


@pytest.fixture
def file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # MLflow 3 opens its file store only when asked to; the tracker asks for its own calls,
    # the test asks for its reading back
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_of(client, experiment: str) -> tuple[list, list]:
    """(top-level runs, nested runs) of an experiment, oldest first."""
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    nested = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return top, nested


@pytest.mark.slow
@needs_mlflow
def test_a_whole_run_is_in_mlflow(full_run, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = client_for(full_run.mlflow_uri)
    top, nested = runs_of(client, "pcamflow-tests")
    assert len(top) == 1
    run = top[0]
    assert f"mlflow: run {run.info.run_id} in experiment 'pcamflow-tests'" in full_run.stdout
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["purpose"] == "test"
    assert run.data.tags["pcamflow.run_dir"] == str(full_run.run_dir.resolve())
    records = read_run_record(full_run.run_dir)
    for name, record in records.items():
        assert run.data.tags[f"stage.{name}.status"] == "completed"
        assert run.data.metrics[f"stage.{name}.duration_s"] == pytest.approx(record.duration_s)

    # settings as params, and the hyperparameters the model was trained with (tuned included)
    params = run.data.params
    assert params["train.num_layers"] == "20" and params["tune.max_jobs"] == "2"
    assert params["deploy.name"] == "run-report-test"
    model = records["train"].load_artifact()
    for key, value in model.hyperparameters.items():
        assert params[f"model.{key}"] == value

    # metric lines: one value per epoch, step = epoch
    history = json.loads((full_run.run_dir / "train" / "history.json").read_text())
    for key in ("train:accuracy", "train:cross_entropy", "validation:accuracy"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert sorted((m.step, m.value) for m in logged) == [(e["epoch"], e[key]) for e in history]

    # evaluation metrics
    evaluation = records["evaluate"].load_artifact()
    for key, value in evaluation.metrics.items():
        if value is not None:
            assert run.data.metrics[f"evaluation:{metric_name(key)}"] == pytest.approx(value)

    # the report, the model and the evaluation as artifacts
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "run.json", "settings.toml", "model", "evaluation"} <= logged
    archive = client.list_artifacts(run.info.run_id, "model")
    assert [(f.path, f.file_size) for f in archive] == [
        ("model/model.tar.gz", Path(model.uri).stat().st_size)]
    evaluated = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/roc.png", "evaluation/report.html"} <= evaluated

    # each tuning trial, a nested run
    with open(full_run.run_dir / "tune" / "trials.csv", newline="") as handle:
        trials = {row["trial"]: row for row in csv.DictReader(handle)}
    assert len(nested) == len(trials) == 2
    for child in nested:
        assert child.data.tags["mlflow.parentRunId"] == run.info.run_id
        trial = trials[child.data.tags["pcamflow.trial"]]
        assert child.data.params["learning_rate"] == trial["learning_rate"]
        assert child.data.metrics["validation:accuracy"] == pytest.approx(
            float(trial["validation:accuracy"]))
        assert child.info.status == "FINISHED"  # COMPLETE trials


@needs_mlflow
def test_failed_resumed_and_idle_runs_in_mlflow(tmp_path, file_store):
    # a failed run is FAILED, its re-run a new run, a re-run that runs nothing no run at all
    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")},
                                   "tracking": {"mlflow_uri": file_store, "experiment": "flaky"}})
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "fail-train").touch()
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline().run(settings, observers=[MlflowTracker(settings.tracking)])
    (settings.run_dir / "fail-train").unlink()
    pipeline().run(settings, observers=[MlflowTracker(settings.tracking)])
    idle = MlflowTracker(settings.tracking)
    pipeline().run(settings, observers=[idle])  # every stage complete: nothing to log
    assert idle.summary() is None

    failed, again = runs_of(client_for(file_store), "flaky")[0]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["stage.train.status"] == "failed"
    assert failed.data.tags["stage.convert.status"] == "completed"
    assert failed.data.metrics["data.train.images"] == 1
    assert again.info.status == "FINISHED"
    assert again.data.tags["stage.convert.ran"] == "false (complete earlier)"
    assert again.data.tags["stage.train.ran"] == "true"
    assert again.data.params["pipeline.run_dir"] == str(settings.run_dir)


@needs_mlflow
def test_a_store_that_cannot_be_opened_stops_the_run_before_any_stage(tmp_path, file_store):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    tracking = TrackingSettings(mlflow_uri=blocked.as_uri())
    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")}})
    with pytest.raises(TrackingError, match=r"tracking\.mlflow_uri: cannot start an MLflow run"):
        pipeline().run(settings, observers=[MlflowTracker(tracking)])
    assert calls(settings.run_dir) == []


# Run the command line as if a package were not installed: its import fails as a missing
# package's does.
_WITHOUT = """
import importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "mlflow":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
from pcamflow.cli import main
status = main(sys.argv[1:])
assert "mlflow" not in sys.modules
sys.exit(status)
"""

_CORE_RUN = """
[pipeline]
run_dir = "{run}"
trainer = "none"
evaluator = "none"

[data]
source = "{source}"

[convert]
workers = 1
"""


def _run_without_mlflow(
    settings: Path, command: str = "run"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WITHOUT, command, str(settings)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["run", "validate"])
def test_asking_for_tracking_without_the_extra_names_it(tmp_path, pcam_dir, command) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(_CORE_RUN.format(run=tmp_path / "run", source=pcam_dir)
                        + '[tracking]\nmlflow_uri = "file:/tmp/mlruns"\n')
    done = _run_without_mlflow(settings, command)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "pcamflow: error: tracking.mlflow_uri needs the 'mlflow' extra, which is not "
        "installed: pip install 'pcamflow[mlflow]' (in a clone of pcamflow: "
        "pip install -e '.[mlflow]')"
    )
    assert not (tmp_path / "run" / "run.json").exists()  # nothing ran


def test_without_tracking_a_run_needs_no_mlflow(tmp_path, pcam_dir) -> None:
    settings = tmp_path / "settings.toml"
    settings.write_text(_CORE_RUN.format(run=tmp_path / "run", source=pcam_dir))
    done = _run_without_mlflow(settings)
    assert done.returncode == 0, done.stderr
    assert f"report: {tmp_path / 'run' / 'report.html'}" in done.stdout
    assert "mlflow" not in done.stdout
