"""``pcamflow plan``: every AWS request a run would make, checked, and what it would cost.

:func:`build_plan` walks the pipeline the settings describe and builds, for each SageMaker
stage, the requests it sends (with the same builders the stages use), each validated against
botocore's service model. Values only AWS knows (the account, the default bucket, the
execution role) are shown as placeholders unless set; counts come from a finished manifests
stage of the run folder, or else from PCam's split sizes. Nothing is sent.

The cost estimate multiplies instance-hours by ``aws.prices`` (USD per instance-hour): an
upper bound for training (``aws.training.max_runtime_s`` per job, unless
``aws.training.estimated_runtime_s`` is set), and ``aws.endpoint.endpoint_hours`` for an
endpoint, which is billed until torn down.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from pcamflow.errors import ConfigError

__all__ = ["CostLine", "Plan", "PlannedRequest", "build_plan", "format_plan"]

PCAM_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}
ACCOUNT = "<account>"


@attrs.frozen
class PlannedRequest:
    """One AWS request (or ``count`` alike) that a stage would send."""

    stage: str
    service: str
    operation: str
    params: dict[str, Any]
    count: int = 1


@attrs.frozen
class CostLine:
    """Instance-hours of one stage and their price (None: no price in ``aws.prices``)."""

    stage: str
    instance_type: str
    instances: int
    hours: float
    price: float | None
    note: str = ""

    @property
    def cost(self) -> float | None:
        """USD, or None without a price."""
        return None if self.price is None else self.price * self.instances * self.hours


@attrs.frozen
class Plan:
    """What a run would do on AWS."""

    region: str
    requests: tuple[PlannedRequest, ...]
    costs: tuple[CostLine, ...]
    notes: tuple[str, ...] = ()

    @property
    def spends(self) -> bool:
        """Whether the run starts anything billed per instance-hour."""
        return bool(self.costs)

    @property
    def total(self) -> float | None:
        """The estimated total in USD (None when a price is missing)."""
        costs = [c.cost for c in self.costs]
        return None if any(c is None for c in costs) else float(sum(c or 0.0 for c in costs))


def _counts(settings: Any) -> tuple[dict[str, int], bool]:
    from pcamflow._io import recorded_artifacts
    from pcamflow.artifacts import Manifests

    for _, artifact in recorded_artifacts(settings.run_dir, Manifests):
        if artifact.counts:
            return dict(artifact.counts), True
    cap = settings.manifests.max_per_class
    sizes = {s: PCAM_SIZES[s] for s in settings.data.splits}
    return ({s: min(n, 2 * cap) if cap else n for s, n in sizes.items()}, False)


def _region(settings: Any) -> str:
    if settings.aws.region:
        return str(settings.aws.region)
    import botocore.session

    region = botocore.session.get_session().get_config_variable("region")
    if not region:
        raise ConfigError("aws.region: not set, and the AWS configuration names no region")
    return str(region)


def _planned_key(key: str | None, region: str) -> str | None:
    """The key ARN a run would resolve ``aws.kms_key_id`` to (a placeholder for an alias)."""
    if not key or not (key.startswith("alias/") or ":alias/" in key):
        return key
    return f"arn:aws:kms:{region}:{ACCOUNT}:key/<key of {key.rsplit(':', 1)[-1]}>"


def build_plan(settings: Any) -> Plan:
    """The requests and costs of a run of ``settings``' pipeline (nothing is sent).

    Raises:
        ConfigError: a request does not fit botocore's model of the API, or a setting is
            invalid; every problem is listed.
    """
    from pcamflow.sagemaker import hosting as hq
    from pcamflow.sagemaker import requests as rq
    from pcamflow.sagemaker.s3 import encryption_args, run_prefix
    from pcamflow.sagemaker.trainer import check_no_extensions

    aws, stages = settings.aws, settings.pipeline.stage_names()
    region = _region(settings)
    resolved = rq.Resolved(
        region=region,
        role_arn=aws.role_arn or f"arn:aws:iam::{ACCOUNT}:role/<SageMaker execution role>",
        bucket=aws.bucket or f"sagemaker-{region}-{ACCOUNT}",
        image_uri=rq.algorithm_image(region),
        kms_key_id=_planned_key(aws.kms_key_id, region),
    )
    from pcamflow._io import run_id

    base = run_prefix(resolved.bucket, aws.prefix, settings.run_dir,
                      run_id(settings.run_dir) or "<run id>")
    counts, measured = _counts(settings)
    notes = [] if measured else [
        "image counts are PCam's split sizes (no finished manifests stage in the run folder)"
    ]
    out: list[PlannedRequest] = []
    costs: list[CostLine] = []
    sse = encryption_args(resolved.kms_key_id)
    manifests = {s: str(base.join("manifests", f"{s}.manifest")) for s in counts}
    price = aws.prices.get
    training = aws.training
    train_hours = (training.estimated_runtime_s or training.max_runtime_s) / 3600

    if stages.get("converter") == "sagemaker":
        key = base.join("images", "train", "0", "train_000000.jpg").key
        out.append(PlannedRequest("convert", "s3", "PutObject",
                                  {"Bucket": resolved.bucket, "Key": key, **sse},
                                  count=sum(counts.values())))
    if stages.get("manifest_builder") == "sagemaker":
        for split in counts:
            for name in (f"{split}.manifest", f"{split}.lst"):
                out.append(PlannedRequest("manifests", "s3", "PutObject", {
                    "Bucket": resolved.bucket, "Key": base.join("manifests", name).key, **sse}))
    hp = settings.train.hyperparameters.with_values(num_training_samples=counts.get("train", 1))
    if stages.get("tuner") == "sagemaker":
        check_no_extensions(settings)
        tune_hp = attrs.evolve(hp, epochs=settings.tune.epochs or hp.epochs).to_sagemaker()
        request = rq.tuning_job_request(
            rq.job_name(aws.prefix, "tune"), settings.tune, tune_hp, manifests,
            str(base.join("tune", "output")), aws, resolved)
        out.append(PlannedRequest("tune", "sagemaker", "CreateHyperParameterTuningJob", request))
        jobs = settings.tune.max_jobs
        costs.append(CostLine("tune", training.instance_type, training.instance_count * jobs,
                              train_hours, price(training.instance_type), f"{jobs} training jobs"))
    if stages.get("trainer") == "sagemaker":
        check_no_extensions(settings)
        request = rq.training_job_request(
            rq.job_name(aws.prefix, "train"), hp.to_sagemaker(), manifests,
            str(base.join("train", "output")), aws, resolved)
        out.append(PlannedRequest("train", "sagemaker", "CreateTrainingJob", request))
        costs.append(CostLine("train", training.instance_type, training.instance_count,
                              train_hours, price(training.instance_type)))
    model_uri = str(base.join("train", "output", "<training job>", "output", "model.tar.gz"))
    if stages.get("evaluator") == "sagemaker" and aws.evaluation.evaluate_via == "transform":
        name = rq.job_name(aws.prefix, "eval-model")
        out += [
            PlannedRequest("evaluate", "s3", "PutObject", {
                "Bucket": resolved.bucket,
                "Key": base.join("evaluate", "transform-input.manifest").key, **sse}),
            PlannedRequest("evaluate", "sagemaker", "CreateModel",
                           hq.model_request(name, model_uri, aws, resolved)),
            PlannedRequest("evaluate", "sagemaker", "CreateTransformJob", hq.transform_job_request(
                rq.job_name(aws.prefix, "eval"), name,
                str(base.join("evaluate", "transform-input.manifest")),
                str(base.join("evaluate", "transform-output")), aws, resolved)),
            PlannedRequest("evaluate", "sagemaker", "DeleteModel", {"ModelName": name}),
        ]
        costs.append(CostLine("evaluate", aws.evaluation.transform_instance_type,
                              aws.evaluation.transform_instance_count, 1.0,
                              price(aws.evaluation.transform_instance_type), "assumed 1 h"))
    if stages.get("deployer") == "sagemaker":
        deploy = settings.deploy
        model, config = rq.job_name(deploy.name, "model"), rq.job_name(deploy.name, "config")
        out += [
            PlannedRequest("deploy", "sagemaker", "CreateModel",
                           hq.model_request(model, model_uri, aws, resolved)),
            PlannedRequest("deploy", "sagemaker", "CreateEndpointConfig",
                           hq.endpoint_config_request(config, model, deploy.instance_type,
                                                      deploy.initial_instance_count, aws,
                                                      resolved)),
            PlannedRequest("deploy", "sagemaker", "CreateEndpoint",
                           hq.endpoint_request(deploy.name, config, aws)),
        ]
        for operation, params in hq.scaling_requests(deploy.name, deploy.initial_instance_count,
                                                     aws):
            out.append(PlannedRequest("deploy", "application-autoscaling", operation, params))
        costs.append(CostLine("deploy", deploy.instance_type, deploy.initial_instance_count,
                              aws.endpoint.endpoint_hours, price(deploy.instance_type),
                              "billed until `pcamflow teardown`"))
    problems = []
    for planned in out:
        try:
            rq.check_request(planned.service, planned.operation, planned.params)
        except ConfigError as error:
            problems.append(f"[{planned.stage}] {error}")
    if problems:
        raise ConfigError("the plan has invalid requests:\n" + "\n".join(problems))
    return Plan(region=region, requests=tuple(out), costs=tuple(costs), notes=tuple(notes))


def format_plan(plan: Plan) -> str:
    """The plan as text: each request (JSON), then the cost estimate."""
    lines = [f"AWS requests in {plan.region} (each checked against botocore's API model):"]
    for planned in plan.requests:
        times = f" x {planned.count}" if planned.count > 1 else ""
        lines.append(f"[{planned.stage}] {planned.service} {planned.operation}{times}")
        body = json.dumps(planned.params, indent=2, sort_keys=True)
        lines += ["    " + line for line in body.splitlines()]
    if not plan.requests:
        lines.append("  none: no stage runs on AWS")
    lines.append("")
    lines.append("Estimated cost (USD; instance-hours x aws.prices):")
    for cost in plan.costs:
        shown = f"{cost.cost:10.2f}" if cost.cost is not None else "   no price"
        rate = f"@ {cost.price:.4f}/h" if cost.price is not None else "(add it to aws.prices)"
        note = f"  {cost.note}" if cost.note else ""
        lines.append(f"  {cost.stage:<9} {cost.instance_type:<16} x{cost.instances:<3} "
                     f"{cost.hours:7.2f} h {rate:<22} {shown}{note}")
    total = plan.total
    shown_total = f"{total:.2f}" if total is not None else "unknown (prices missing)"
    lines.append(f"  total: {shown_total}"
                 + ("" if plan.costs else " (nothing billed per instance-hour)"))
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
