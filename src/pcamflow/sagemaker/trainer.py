"""The SageMaker trainer: a training job of the built-in Image Classification algorithm.

The job reads the train and validation augmented manifests in Pipe mode, with the
hyperparameter contract's strings (``num_training_samples`` from the train manifest's count;
a tuning result's best values, when an earlier stage tuned). Local-only extensions (dihedral
augmentation, stain jitter, local weights) cannot be honoured by the algorithm and are
rejected in :meth:`SageMakerTrainer.validate` rather than dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from pcamflow.artifacts import Manifests, ModelArtifact, TuningResult
from pcamflow.errors import ConfigError
from pcamflow.hyperparameters import Hyperparameters
from pcamflow.sagemaker._stage import JobStageOptions
from pcamflow.stages import Context, Trainer

__all__ = [
    "SageMakerTrainer",
    "check_no_extensions",
    "check_training",
    "training_hyperparameters",
    "training_request",
]

log = logging.getLogger(__name__)


def check_no_extensions(settings: Any) -> None:
    """Raise :class:`ConfigError` if ``[train.extensions]`` asks for local-only training."""
    used = settings.train.extensions.non_default()
    if used:
        names = ", ".join(f"train.extensions.{k} = {v!r}" for k, v in sorted(used.items()))
        raise ConfigError(
            f"{names}: local-only extension(s) that SageMaker's built-in algorithm cannot "
            "apply; remove them or use trainer = 'local'"
        )


def check_training(settings: Any, hyperparameters: Hyperparameters | None = None) -> None:
    """What the algorithm documents about training, checked before anything is spent.

    Raises:
        ConfigError: the training instance type is not one of the GPU families the algorithm
            trains on. A depth its MXNet ResNet does not build at this image size is logged as
            a warning (the rule is read from the source, not documented by AWS).
    """
    from pcamflow.sagemaker.algorithm import check_training_instance, depth_warnings

    check_training_instance(settings.aws.training.instance_type)
    hp = hyperparameters or settings.train.hyperparameters
    for warning in depth_warnings(hp.num_layers, hp.image_shape):
        log.warning("%s", warning)


def check_aws(settings: Any, services: Any = None) -> None:
    """Cheap checks of ``[aws]`` that the SageMaker stages share (no AWS call).

    Without AWS clients among ``services``, the region must be known: ``aws.region`` or the
    AWS configuration's (its files and environment, read without a request).
    """
    from pcamflow.sagemaker.requests import vpc_config

    if not (services or {}).get("aws"):
        check_region(settings.aws)
    vpc_config(settings.aws)
    if settings.aws.training.checkpoint_s3_uri and not settings.aws.training.use_spot:
        raise ConfigError("aws.training.checkpoint_s3_uri: set, but aws.training.use_spot is false")


def check_region(aws: Any) -> str:
    """``aws.region``, or the region the AWS configuration (profile ``aws.profile``) names.

    Raises:
        ConfigError: neither names one, or the profile does not exist.
    """
    if aws.region:
        return str(aws.region)
    import botocore.exceptions
    import botocore.session

    try:
        region = botocore.session.Session(profile=aws.profile).get_config_variable("region")
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(f"aws.profile: {aws.profile!r} is not in the AWS configuration") \
            from None
    if not region:
        raise ConfigError(
            "aws.region: not set, and the AWS configuration names no region (set aws.region, "
            "or AWS_DEFAULT_REGION)"
        )
    return str(region)


def training_hyperparameters(
    base: Hyperparameters, manifests: Manifests, tuning: TuningResult | None = None
) -> dict[str, str]:
    """The algorithm's strings for a job on ``manifests``, tuned values applied.

    Only what the tuning result holds is taken from it (the tuned ranges' values); everything
    else, ``epochs`` included, comes from ``base``.
    """
    hp = base
    if tuning is not None:
        tuned = {
            k: v for k, v in tuning.best_hyperparameters.items() if k != "num_training_samples"
        }
        hp = base.with_values(**tuned)
    count = manifests.counts.get("train")
    if not count:
        raise ConfigError("manifests: the train manifest's count is unknown or zero")
    return hp.with_values(num_training_samples=count).to_sagemaker()


TUNED = "<best of the tuning job>"
"""What the plan shows for a tuned hyperparameter until the tuning job has found it."""


def training_request(
    context: Context,
    resolved: Any,
    manifests: Manifests,
    tuning: TuningResult | None,
    name: str,
    tuned_names: Any = (),
    *,
    planned: bool = False,
) -> dict[str, Any]:
    """The ``CreateTrainingJob`` request of the trainer stage in ``context``.

    Both :meth:`SageMakerTrainer.run` and :meth:`SageMakerTrainer.plan` build it here.

    Args:
        context: the stage's context.
        resolved: the run's resolved values (or the plan's placeholders).
        manifests: the train and validation manifests (``s3://``) and their counts.
        tuning: the tuning result whose values to apply, if any.
        name: the training job's name.
        tuned_names: hyperparameters a tuning job will choose (the plan shows placeholders).
        planned: for the plan: no run id is made (``<run id>`` until the run has one).
    """
    from pcamflow.sagemaker.planning import planned_root
    from pcamflow.sagemaker.requests import training_job_request
    from pcamflow.sagemaker.s3 import run_root

    settings = context.settings
    hyperparameters = training_hyperparameters(settings.train.hyperparameters, manifests, tuning)
    hyperparameters.update({k: TUNED for k in tuned_names})
    root = planned_root(context, resolved) if planned else run_root(context, resolved.bucket)
    output = root.join(context.stage_name or "train", "output")
    return training_job_request(name, hyperparameters, manifests.manifests, str(output),
                                settings.aws, resolved)


class SageMakerTrainer(JobStageOptions, Trainer):
    """Trains on SageMaker with the built-in Image Classification algorithm (Pipe mode).

    After the job, its metric lines are read back from CloudWatch Logs with the parser of
    :mod:`pcamflow.metric_lines` into ``history.json`` in the stage folder.

    Args:
        progress: show the job's progress.
        ask: asks whether to stop the job on Ctrl-C (default: on the terminal, if any).
    """

    def validate(self, context: Context) -> None:
        check_training(context.settings)
        check_no_extensions(context.settings)
        check_aws(context.settings, context.services)

    def plan(self, context: Context) -> Any:
        from pcamflow.sagemaker.algorithm import depth_warnings
        from pcamflow.sagemaker.planning import (
            StagePlanner,
            planned_manifests,
            planned_resolved,
        )
        from pcamflow.sagemaker.requests import job_name

        check_no_extensions(context.settings)
        settings = context.settings
        resolved = planned_resolved(settings)
        planner = StagePlanner(context, resolved.region)
        manifests, counts = planned_manifests(context, resolved, planner)
        tuning = context.optional_input(TuningResult)
        pending = () if tuning is not None or "tuner" not in settings.pipeline.stage_names() \
            else tuple(sorted(settings.tune.ranges))
        request = training_request(context, resolved, manifests, tuning,
                                   job_name(settings.aws.prefix, "train"), pending, planned=True)
        planner.request("sagemaker", "CreateTrainingJob", request)
        hp = settings.train.hyperparameters
        planner.warnings += depth_warnings(hp.num_layers, hp.image_shape)
        epochs = int(request["HyperParameters"]["epochs"])
        images = counts.get("train", 0) + counts.get("valid", 0)
        planner.billed("s3", "GetObject", {"Bucket": resolved.bucket, "Key": "<image>"},
                       images * epochs, f"Pipe mode reads every image each epoch ({epochs})")
        training = settings.aws.training
        hours = (training.estimated_runtime_s or training.max_runtime_s) / 3600
        planner.instance_hours(
            training.instance_type, training.instance_count, hours,
            "aws.training.estimated_runtime_s" if training.estimated_runtime_s
            else "at most aws.training.max_runtime_s")
        return planner.plan()

    def run(self, context: Context) -> ModelArtifact:
        from pcamflow.sagemaker import jobs
        from pcamflow.sagemaker.clients import clients_for, resolve
        from pcamflow.sagemaker.requests import job_name

        settings = context.settings
        aws = settings.aws
        manifests = context.input(Manifests)
        tuning = context.optional_input(TuningResult)
        clients = clients_for(context)
        resolved = resolve(clients, aws)
        request = training_request(context, resolved, manifests, tuning,
                                   job_name(aws.prefix, "train"))
        job = jobs.attach_or_create("training", request, clients, context.stage_dir)
        job = jobs.wait(
            "training", job, poll_s=clients.poll_s(aws), progress=self.progress,
            describe=_last_metrics, **({"ask": self.ask} if self.ask else {}),
        )
        metrics = final_metrics(job)
        history = _history(clients, str(job.training_job_name), context.stage_dir)
        if history:
            metrics["epochs_run"] = float(len(history))
        output = request["OutputDataConfig"]["S3OutputPath"]
        return ModelArtifact(
            uri=_model_uri(job, output),
            hyperparameters=dict(request["HyperParameters"]),
            metrics=metrics,
            job_name=str(job.training_job_name),
        )


def _history(clients: Any, job_name: str, folder: Any) -> list[dict[str, Any]]:
    """The job's per-epoch metrics from its log, written to ``history.json`` ([] if unread)."""
    import json

    from pcamflow._io import atomic_write
    from pcamflow.errors import AwsError
    from pcamflow.sagemaker.logs import metric_history

    try:
        history = metric_history(clients.client("logs"), job_name)
    except AwsError as error:  # the model is made; its history is a nicety
        log.warning("%s", error)
        return []
    with atomic_write(folder / "history.json", encoding="utf-8") as handle:
        json.dump(history, handle, indent=2)
    return history


def final_metrics(job: Any) -> dict[str, float]:
    """The job's final metrics (``validation:accuracy``, ...), as SageMaker reports them."""
    found = getattr(job, "final_metric_data_list", None)
    if not isinstance(found, list):
        return {}
    return {str(m.metric_name): float(m.value) for m in found}


def _last_metrics(job: Any) -> str:
    metrics = final_metrics(job)
    return " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def _model_uri(job: Any, output: str) -> str:
    artifacts = getattr(job, "model_artifacts", None)
    uri = getattr(artifacts, "s3_model_artifacts", None)
    if isinstance(uri, str) and uri.endswith(".tar.gz"):
        return uri
    # SageMaker's layout: <output path>/<job name>/output/model.tar.gz
    return f"{output.rstrip('/')}/{job.training_job_name}/output/model.tar.gz"
