"""All six SageMaker stages in one pipeline in local mode: the run report and MLflow tracking of
it, a re-run that resumes, teardown."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import settings_for

from pcamflow.artifacts import Endpoint, Evaluation, ModelArtifact, TuningResult
from pcamflow.evaluation.run_files import RunFiles
from pcamflow.evaluation.run_report import RunReport
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.sagemaker.deployer import teardown_endpoint
from pcamflow.tracking import metric_name, observers_for

STAGES = {"converter": "sagemaker", "manifest_builder": "sagemaker", "tuner": "sagemaker",
          "trainer": "sagemaker", "evaluator": "sagemaker", "deployer": "sagemaker"}


def test_the_whole_pipeline_runs_is_reported_resumes_and_tears_down(
    local: Any, tmp_path: Path, pcam_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pcamflow.data.convert")
    tracking = {}
    if importlib.util.find_spec("mlflow") is not None:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking = {"mlflow_uri": (tmp_path / "mlruns").as_uri(), "experiment": "sagemaker"}
    settings = settings_for(
        tmp_path, pipeline=STAGES, data={"source": str(pcam_dir)}, convert={"workers": 1},
        manifests={"max_per_class": 4}, evaluate={"bootstrap": 20},
        tune={"max_jobs": 2, "epochs": 1, "ranges": {"learning_rate": {
            "type": "continuous", "min_value": 0.001, "max_value": 0.01}}},
        train={"epochs": 2}, deploy={"name": "pcam-e2e"}, tracking=tracking,
    )
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    observers = observers_for(settings)
    result = pipeline.run(settings, services=local.services(), observers=observers)
    assert result.ran == pipeline.names
    artifacts = result.artifacts
    tuning = artifacts["tune"]
    assert isinstance(tuning, TuningResult) and set(tuning.best_hyperparameters) == {
        "learning_rate"}
    model = artifacts["train"]
    assert isinstance(model, ModelArtifact)
    # the tuned value, and [train]'s epochs (not the tuning job's)
    assert model.hyperparameters["learning_rate"] == tuning.best_hyperparameters["learning_rate"]
    assert model.hyperparameters["epochs"] == "2"
    evaluation = artifacts["evaluate"]
    assert isinstance(evaluation, Evaluation)
    assert 0.0 <= evaluation.metrics["accuracy"] <= 1.0
    endpoint = artifacts["deploy"]
    assert isinstance(endpoint, Endpoint) and endpoint.backend == "sagemaker"
    clients = local.clients()
    assert clients.sagemaker.describe_endpoint(EndpointName="pcam-e2e")["EndpointStatus"] == (
        "InService")

    _check_report_and_tracking(settings, observers, tracking, local.clients())

    again = pipeline.run(settings, services=local.services())
    assert again.ran == ()  # every stage complete, its outputs still in S3
    trainings = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert len(trainings) == 3  # two tuning trials and the training job, none again

    teardown_endpoint(endpoint, clients, wait=False)
    assert clients.sagemaker.list_endpoints()["Endpoints"] == []
    assert local.warnings == []


def test_pcamflow_run_with_local_mode_spends_nothing_and_needs_no_yes(
    aws_env: Any, tmp_path: Path, pcam_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from pcamflow.cli import main

    run = tmp_path / "run"
    config = tmp_path / "settings.toml"
    config.write_text(f"""
[pipeline]
run_dir = "{run}"
converter = "sagemaker"
manifest_builder = "sagemaker"
trainer = "sagemaker"
evaluator = "none"
[data]
source = "{pcam_dir}"
[convert]
workers = 1
[manifests]
max_per_class = 4
[train]
num_layers = 20
image_shape = "3,28,28"
epochs = 1
mini_batch_size = 8
[aws]
region = "eu-west-1"
[aws.prices]
"ml.p3.2xlarge" = 3.825
""")
    assert main(["run", str(config)]) == 2  # on AWS this would spend: --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["plan", str(config), "--local-mode"]) == 0
    planned = capsys.readouterr().out
    assert "CreateTrainingJob" in planned and "nothing is billed" in planned
    assert main(["run", str(config), "--local-mode"]) == 0
    stages = json.loads((run / "run.json").read_text())["stages"]
    assert [s["status"] for s in stages.values()] == ["completed"] * 3
    model = stages["train"]["artifact"]
    # no role, no bucket set: the execution role and the default bucket, as in a notebook
    assert model["uri"].startswith("s3://sagemaker-eu-west-1-123456789012/pcamflow/run-")
    assert model["job_name"].startswith("pcamflow-train-")


def _check_report_and_tracking(
    settings: Any, observers: list[Any], tracking: dict[str, str], clients: Any
) -> None:
    """The run report and MLflow hold what the jobs did, read back from SageMaker's answers."""
    report = observers[0]
    assert isinstance(report, RunReport) and report.path == settings.run_dir / "report.html"
    page = report.path.read_text()
    trials = RunFiles.read(settings.run_dir).trials()
    assert trials is not None and trials.id_column == "training_job"
    names = [row["training_job"] for row in trials.rows]
    ran = {job["TrainingJobName"] for job in clients.sagemaker.list_training_jobs()[
        "TrainingJobSummaries"]}
    assert len(names) == 2 and set(names) <= ran and all(f">{name}<" in page for name in names)
    # the trainer's history comes from its job's CloudWatch log, through the metric-line parser
    history = json.loads((settings.run_dir / "train" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history] == [0, 1]
    assert "No training history" not in page
    assert "<td>backend</td><td>sagemaker</td>" in page.replace(' class="text"', "")
    if not tracking:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking["mlflow_uri"])
    experiment = client.get_experiment_by_name("sagemaker")
    runs = client.search_runs([experiment.experiment_id])
    nested = {r.data.tags["pcamflow.trial"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert nested == set(names)
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.data.tags["endpoint.backend"] == "sagemaker"
    assert top.data.tags["model.uri"].startswith("s3://")  # an S3 model is named, not copied
    steps = client.get_metric_history(top.info.run_id, metric_name("validation:accuracy"))
    assert [m.step for m in steps] == [0, 1]
    assert [m.value for m in steps] == [e["validation:accuracy"] for e in history]
