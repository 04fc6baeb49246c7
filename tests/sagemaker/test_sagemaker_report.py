"""The run report and MLflow tracking of a SageMaker run (all six stages on moto).

moto completes jobs at once without running anything, so hooks play SageMaker's part: a
finished training job writes its ``model.tar.gz``, a batch transform writes one prediction per
listed image, and the tuning job's training jobs are listed in the shape of the
ListTrainingJobsForHyperParameterTuningJob answer
(https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ListTrainingJobsForHyperParameterTuningJob.html),
one Completed, one Stopped by early stopping, one Failed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import fake_answer, patch_answer, settings_for

from pcamflow.evaluation.run_files import RunFiles
from pcamflow.evaluation.run_report import RunReport
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry
from pcamflow.sagemaker.clients import services_for
from pcamflow.sagemaker.deployer import teardown_endpoint
from pcamflow.sagemaker.s3 import S3Uri

STAGES = {"converter": "sagemaker", "manifest_builder": "sagemaker", "tuner": "sagemaker",
          "trainer": "sagemaker", "evaluator": "sagemaker", "deployer": "sagemaker"}
STATUSES = ("Completed", "Stopped", "Failed")


def _body(params: dict[str, Any]) -> dict[str, Any]:
    body = params.get("body") or b"{}"
    return json.loads(body.decode() if isinstance(body, bytes) else body)


def _play_sagemaker(clients: Any) -> None:
    s3 = clients.s3

    def trained(params: dict[str, Any], **kwargs: Any) -> None:
        request = _body(params)
        out = S3Uri.parse(request["OutputDataConfig"]["S3OutputPath"])
        key = out.join(request["TrainingJobName"], "output", "model.tar.gz").key
        s3.put_object(Bucket=out.bucket, Key=key, Body=b"model")

    def transformed(params: dict[str, Any], **kwargs: Any) -> None:
        request = _body(params)
        listing = S3Uri.parse(request["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"])
        _, *keys = json.loads(s3.get_object(Bucket=listing.bucket,
                                            Key=listing.key)["Body"].read())
        out = S3Uri.parse(request["TransformOutput"]["S3OutputPath"])
        for key in keys:
            score = 0.8 if key.startswith("1/") else 0.3
            s3.put_object(Bucket=out.bucket, Key=out.join(key + ".out").key,
                          Body=json.dumps([1 - score, score]))

    clients.session.events.register("before-call.sagemaker.CreateTrainingJob", trained)
    clients.session.events.register("before-call.sagemaker.CreateTransformJob", transformed)

    def best(answer: dict[str, Any]) -> None:
        answer["BestTrainingJob"]["TunedHyperParameters"] = {"learning_rate": "0.03"}
        answer["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] = 0.9

    def jobs(params: dict[str, Any]) -> dict[str, Any]:
        summaries = []
        for i, status in enumerate(STATUSES):
            summary = {"TrainingJobName": f"pcam-trial-{i}", "TrainingJobArn": f"arn:trial-{i}",
                       "CreationTime": 0, "TrainingJobStatus": status,
                       "TunedHyperParameters": {"learning_rate": f"0.0{i + 1}"}}
            if status != "Failed":
                summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                    "MetricName": "validation:accuracy", "Value": 0.7 + i / 10}
            summaries.append(summary)
        return {"TrainingJobSummaries": summaries}

    patch_answer(clients.session, "DescribeHyperParameterTuningJob", best)
    fake_answer(clients.session, "ListTrainingJobsForHyperParameterTuningJob", jobs)


def test_a_sagemaker_run_is_reported_and_tracked(
    aws: Any, tmp_path: Path, pcam_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pcamflow.data.convert")
    _play_sagemaker(aws)
    tracking = {}
    if importlib.util.find_spec("mlflow") is not None:
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        tracking = {"mlflow_uri": (tmp_path / "mlruns").as_uri(), "experiment": "sagemaker"}
    settings = settings_for(
        tmp_path, pipeline=STAGES, data={"source": str(pcam_dir)}, convert={"workers": 1},
        manifests={"max_per_class": 4}, evaluate={"bootstrap": 20},
        tune={"max_jobs": 3, "ranges": {"learning_rate": {
            "type": "continuous", "min_value": 0.01, "max_value": 0.1}}},
        train={"epochs": 2}, deploy={"name": "pcam-report"}, tracking=tracking,
    )
    from pcamflow.tracking import observers_for

    observers = observers_for(settings)
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    result = pipeline.run(settings, services=services_for(aws), observers=observers)
    teardown_endpoint(result.artifacts["deploy"], aws, wait=False)

    report = observers[0]
    assert isinstance(report, RunReport) and report.path == settings.run_dir / "report.html"
    page = report.path.read_text()
    for row in ("pcam-trial-0", "Completed", "pcam-trial-1", "Stopped", "pcam-trial-2",
                "Failed"):
        assert f">{row}<" in page
    assert "No training history" in page  # until the trainer leaves a history.json
    assert "<td>backend</td><td>sagemaker</td>" in page.replace(' class="text"', "")
    trials = RunFiles.read(settings.run_dir).trials()
    assert trials is not None and trials.id_column == "training_job"
    assert trials.states() == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials.values() == [pytest.approx(0.7), pytest.approx(0.8), None]

    if not tracking:
        return
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking["mlflow_uri"])
    experiment = client.get_experiment_by_name("sagemaker")
    runs = client.search_runs([experiment.experiment_id])
    nested = {r.data.tags["pcamflow.trial"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert {name: r.info.status for name, r in nested.items()} == {
        "pcam-trial-0": "FINISHED", "pcam-trial-1": "KILLED", "pcam-trial-2": "FAILED"}
    assert nested["pcam-trial-1"].data.params["learning_rate"] == "0.02"
    (top,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert top.data.tags["endpoint.backend"] == "sagemaker"
    assert top.data.tags["model.uri"].startswith("s3://")  # an S3 model is named, not copied
    assert top.data.params["model.learning_rate"] == "0.03"
