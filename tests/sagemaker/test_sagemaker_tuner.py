"""The SageMaker tuner in local mode: the tuning-job request, real trials, the real winner."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import BUCKET, ROLE, context_for, s3_manifests, settings_for

from pcamflow.artifacts import TuningResult
from pcamflow.errors import AwsError, ConfigError, JobFailedError
from pcamflow.sagemaker.tuner import SageMakerTuner

RANGES = {
    "learning_rate": {"type": "continuous", "min_value": 0.001, "max_value": 0.05,
                      "scaling": "Logarithmic"},
    "mini_batch_size": {"type": "integer", "min_value": 8, "max_value": 9},
    "optimizer": {"type": "categorical", "values": ["sgd", "adam"]},
}


def _trials(clients: Any, name: str) -> list[dict[str, Any]]:
    return clients.sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name)["TrainingJobSummaries"]


@pytest.mark.parametrize("strategy", ["Bayesian", "Random", "Hyperband"])
def test_a_tuning_job_runs_its_trials_and_returns_the_one_that_won(
    local: Any, tmp_path: Path, strategy: str
) -> None:
    clients = local.clients()
    settings = settings_for(
        tmp_path, train={"epochs": 4},
        tune={"strategy": strategy, "max_jobs": 2, "max_parallel_jobs": 1, "epochs": 1,
              "early_stopping": "Off" if strategy == "Hyperband" else "Auto",
              "ranges": RANGES},
        aws={"tags": {"project": "pcam"}},
    )
    context = context_for(settings, clients, "tune", {"manifests": s3_manifests(clients)})
    tuner = SageMakerTuner(progress=False)
    tuner.validate(context)
    result = tuner.run(context)

    job = clients.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result.job_name)
    assert len(result.job_name) <= 32 and job["HyperParameterTuningJobStatus"] == "Completed"
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == strategy
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": "validation:accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 1}
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.001",
                                       "MaxValue": "0.05", "ScalingType": "Logarithmic"}],
        "IntegerParameterRanges": [{"Name": "mini_batch_size", "MinValue": "8",
                                    "MaxValue": "9", "ScalingType": "Auto"}],
        "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam"]}],
    }
    if strategy == "Hyperband":
        assert config["TrainingJobEarlyStoppingType"] == "Off"
        assert config["StrategyConfig"] == {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 1}}
    else:
        assert config["TrainingJobEarlyStoppingType"] == "Auto"
    static = job["TrainingJobDefinition"]["StaticHyperParameters"]
    assert static["epochs"] == "1" and static["num_training_samples"] == "8"
    assert not set(RANGES) & set(static)
    assert job["TrainingJobDefinition"]["RoleArn"] == ROLE

    trials = _trials(clients, result.job_name)
    assert len(trials) == 2
    for trial in trials:  # each trial is a training job of its own, with the chosen values
        assert trial["TrainingJobName"].startswith(result.job_name + "-")
        sent = clients.sagemaker.describe_training_job(TrainingJobName=trial["TrainingJobName"])
        assert sent["TuningJobArn"] == job["HyperParameterTuningJobArn"]
        assert sent["HyperParameters"] == {**static, **trial["TunedHyperParameters"]}
        assert 0.001 <= float(trial["TunedHyperParameters"]["learning_rate"]) <= 0.05
    finished = [t for t in trials if t["TrainingJobStatus"] == "Completed"]
    winner = max(finished, key=lambda t: t["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    assert job["BestTrainingJob"]["TrainingJobName"] == winner["TrainingJobName"]
    assert isinstance(result, TuningResult)
    assert result.best_value == pytest.approx(
        winner["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])
    # the tuned ranges' values, and nothing else: tune.epochs stays with the tuning job
    assert result.best_hyperparameters == winner["TunedHyperParameters"]
    assert set(result.best_hyperparameters) == set(RANGES)
    with open(result.trials, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["training_job"] for r in rows) == sorted(t["TrainingJobName"] for t in trials)


def test_a_grid_runs_every_combination(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    ranges = {"optimizer": {"type": "categorical", "values": ["sgd", "adam"]},
              "mini_batch_size": {"type": "integer", "min_value": 8, "max_value": 8}}
    settings = settings_for(tmp_path, tune={"strategy": "Grid", "max_jobs": 5, "ranges": ranges})
    context = context_for(settings, clients, "tune", {"manifests": s3_manifests(clients)})
    result = SageMakerTuner(progress=False).run(context)
    config = clients.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result.job_name)["HyperParameterTuningJobConfig"]
    assert config["ParameterRanges"] == {"CategoricalParameterRanges": [
        {"Name": "mini_batch_size", "Values": ["8"]},
        {"Name": "optimizer", "Values": ["sgd", "adam"]},
    ]}
    assert "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]
    tried = sorted(t["TunedHyperParameters"]["optimizer"] for t in _trials(clients,
                                                                            result.job_name))
    assert tried == ["adam", "sgd"]  # the grid's size, not max_jobs


def test_a_tuning_job_whose_trials_all_fail_fails(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    manifests = s3_manifests(clients, count=4)
    clients.s3.delete_object(Bucket=BUCKET, Key="images/valid/0/valid_000000.jpg")
    settings = settings_for(tmp_path, tune={"max_jobs": 2, "ranges": RANGES})
    context = context_for(settings, clients, "tune", {"manifests": manifests})
    with pytest.raises(JobFailedError, match="All training jobs failed"):
        SageMakerTuner(progress=False).run(context)
    trials = clients.sagemaker.list_training_jobs()["TrainingJobSummaries"]
    assert [t["TrainingJobStatus"] for t in trials] == ["Failed", "Failed"]


def test_a_warm_start_from_a_missing_tuning_job_is_refused(local: Any, tmp_path: Path) -> None:
    clients = local.clients()
    settings = settings_for(tmp_path, tune={"ranges": RANGES, "warm_start_from": "pcam-earlier"})
    context = context_for(settings, clients, "tune", {"manifests": s3_manifests(clients)})
    with pytest.raises(AwsError, match="ValidationException: Could not find parent hyper "
                                       "parameter tuning job 'pcam-earlier'"):
        SageMakerTuner(progress=False).run(context)


def test_a_cpu_training_instance_is_refused(aws_env: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, tune={"ranges": RANGES},
                            aws={"training": {"instance_type": "ml.m5.large"}})
    with pytest.raises(ConfigError, match=r"aws\.training\.instance_type: 'ml\.m5\.large'"):
        SageMakerTuner(progress=False).validate(context_for(settings, None, "tune", {}))


def test_tuning_needs_ranges(aws_env: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tune\.ranges"):
        SageMakerTuner(progress=False).validate(context_for(settings_for(tmp_path), None,
                                                            "tune", {}))


def test_trials_of_every_status_reach_the_run_report_as_optuna_states(tmp_path: Path) -> None:
    """Completed, Stopped (early stopping) and Failed jobs, as ListTrainingJobsForHyperParameter
    TuningJob answers them (its TrainingJobSummaries: HyperParameterTrainingJobSummary,
    https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_HyperParameterTrainingJobSummary.html),
    become the run report's COMPLETE, PRUNED and FAIL."""
    from pcamflow.evaluation.run_files import read_trials
    from pcamflow.sagemaker.tuner import write_trials

    summaries = []
    for i, status in enumerate(("Completed", "Stopped", "Failed")):
        summary = {"TrainingJobName": f"pcam-trial-{i}", "TrainingJobArn": f"arn:trial-{i}",
                   "CreationTime": 0, "TrainingJobStatus": status,
                   "TunedHyperParameters": {"learning_rate": f'"0.0{i + 1}"'}}
        if status != "Failed":
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": "Maximize", "MetricName": "validation:accuracy", "Value": 0.7 + i / 10}
        summaries.append(summary)

    class Paginator:
        def paginate(self, **_: Any) -> list[dict[str, Any]]:
            return [{"TrainingJobSummaries": summaries}]

    class Clients:
        class sagemaker:
            @staticmethod
            def get_paginator(name: str) -> Paginator:
                assert name == "list_training_jobs_for_hyper_parameter_tuning_job"
                return Paginator()

    (tmp_path / "tune").mkdir()
    trials = read_trials(write_trials(Clients(), "pcam-tune", tmp_path / "tune" / "trials.csv"))
    assert trials.id_column == "training_job"
    assert trials.states() == ["COMPLETE", "PRUNED", "FAIL"]
    assert trials.values() == [pytest.approx(0.7), pytest.approx(0.8), None]
    assert [row["learning_rate"] for row in trials.rows] == ["0.01", "0.02", "0.03"]
