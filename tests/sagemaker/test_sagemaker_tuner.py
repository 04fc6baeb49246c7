"""The SageMaker tuner against moto: the tuning-job request and the result it reads back."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from sm_helpers import ROLE, context_for, fake_answer, patch_answer, s3_manifests, settings_for

from pcamflow.artifacts import TuningResult
from pcamflow.errors import ConfigError
from pcamflow.sagemaker.tuner import SageMakerTuner

RANGES = {
    "learning_rate": {"type": "continuous", "min_value": 0.001, "max_value": 0.1,
                      "scaling": "Logarithmic"},
    "mini_batch_size": {"type": "integer", "min_value": 16, "max_value": 18},
    "optimizer": {"type": "categorical", "values": ["sgd", "adam"]},
}


def _best(answer: dict[str, Any]) -> None:
    best = answer["BestTrainingJob"]
    best["TunedHyperParameters"] = {"learning_rate": "0.02", "optimizer": '"adam"',
                                    "mini_batch_size": "17"}
    best["FinalHyperParameterTuningJobObjectiveMetric"] = {
        "Type": "Maximize", "MetricName": "validation:accuracy", "Value": 0.91}


def _trials(params: dict[str, Any]) -> dict[str, Any]:
    return {"TrainingJobSummaries": [
        {"TrainingJobName": f"trial-{i}", "TrainingJobArn": f"arn:trial-{i}",
         "CreationTime": 0, "TrainingJobStatus": "Completed",
         "TunedHyperParameters": {"learning_rate": str(0.01 * (i + 1))},
         "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "validation:accuracy",
                                                         "Value": 0.8 + i / 100}}
        for i in range(3)
    ]}


@pytest.mark.parametrize("strategy", ["Bayesian", "Random", "Hyperband"])
def test_tuning_job_request_and_result(aws: Any, tmp_path: Path, strategy: str) -> None:
    patch_answer(aws.session, "DescribeHyperParameterTuningJob", _best)
    fake_answer(aws.session, "ListTrainingJobsForHyperParameterTuningJob", _trials)
    settings = settings_for(
        tmp_path, train={"epochs": 10},
        tune={"strategy": strategy, "max_jobs": 6, "max_parallel_jobs": 2, "epochs": 5,
              "early_stopping": "Off" if strategy == "Hyperband" else "Auto",
              "warm_start_from": "pcam-tune-earlier",
              "ranges": RANGES},
        aws={"tags": {"project": "pcam"}},
    )
    context = context_for(settings, aws, "tune", {"manifests": s3_manifests(aws, count=8)})
    tuner = SageMakerTuner(progress=False)
    tuner.validate(context)
    result = tuner.run(context)

    job = aws.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result.job_name)
    assert len(result.job_name) <= 32
    config = job["HyperParameterTuningJobConfig"]
    assert config["Strategy"] == strategy
    assert config["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": "validation:accuracy"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    assert config["ParameterRanges"] == {
        "ContinuousParameterRanges": [{"Name": "learning_rate", "MinValue": "0.001",
                                       "MaxValue": "0.1", "ScalingType": "Logarithmic"}],
        "IntegerParameterRanges": [{"Name": "mini_batch_size", "MinValue": "16",
                                    "MaxValue": "18", "ScalingType": "Auto"}],
        "CategoricalParameterRanges": [{"Name": "optimizer", "Values": ["sgd", "adam"]}],
    }
    if strategy == "Hyperband":
        assert config["TrainingJobEarlyStoppingType"] == "Off"
        assert config["StrategyConfig"] == {
            "HyperbandStrategyConfig": {"MinResource": 1, "MaxResource": 5}}
    else:
        assert config["TrainingJobEarlyStoppingType"] == "Auto"
    definition = job["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert static["epochs"] == "5" and static["num_training_samples"] == "8"
    assert not set(RANGES) & set(static)
    assert definition["RoleArn"] == ROLE
    assert [c["ChannelName"] for c in definition["InputDataConfig"]] == ["train", "validation"]
    assert job["WarmStartConfig"] == {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "pcam-tune-earlier"}],
        "WarmStartType": "IdenticalDataAndAlgorithm"}

    assert isinstance(result, TuningResult)
    assert result.best_value == pytest.approx(0.91)
    # the tuned ranges' values, and nothing else: tune.epochs stays with the tuning job
    assert result.best_hyperparameters == {
        "learning_rate": "0.02", "optimizer": "adam", "mini_batch_size": "17"}
    with open(result.trials, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["training_job"] for r in rows] == ["trial-0", "trial-1", "trial-2"]


def test_grid_lists_integer_ranges_as_categories(aws: Any, tmp_path: Path) -> None:
    patch_answer(aws.session, "DescribeHyperParameterTuningJob", _best)
    fake_answer(aws.session, "ListTrainingJobsForHyperParameterTuningJob", _trials)
    ranges = {k: v for k, v in RANGES.items() if k != "learning_rate"}
    settings = settings_for(tmp_path, tune={"strategy": "Grid", "max_jobs": 6, "ranges": ranges})
    context = context_for(settings, aws, "tune", {"manifests": s3_manifests(aws)})
    result = SageMakerTuner(progress=False).run(context)
    config = aws.sagemaker.describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=result.job_name)["HyperParameterTuningJobConfig"]
    assert config["ParameterRanges"] == {"CategoricalParameterRanges": [
        {"Name": "mini_batch_size", "Values": ["16", "17", "18"]},
        {"Name": "optimizer", "Values": ["sgd", "adam"]},
    ]}
    assert "MaxNumberOfTrainingJobs" not in config["ResourceLimits"]


def test_a_cpu_training_instance_is_refused(aws: Any, tmp_path: Path) -> None:
    settings = settings_for(tmp_path, tune={"ranges": RANGES},
                            aws={"training": {"instance_type": "ml.m5.large"}})
    context = context_for(settings, aws, "tune", {"manifests": s3_manifests(aws)})
    with pytest.raises(ConfigError, match=r"aws\.training\.instance_type: 'ml\.m5\.large'"):
        SageMakerTuner(progress=False).validate(context)


def test_tuning_needs_ranges(aws: Any, tmp_path: Path) -> None:
    context = context_for(settings_for(tmp_path), aws, "tune", {"manifests": s3_manifests(aws)})
    with pytest.raises(ConfigError, match=r"tune\.ranges"):
        SageMakerTuner(progress=False).validate(context)
