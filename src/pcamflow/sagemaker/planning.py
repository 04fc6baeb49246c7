"""What the SageMaker stages need to plan their requests without sending any.

A stage's ``plan`` builds its requests with the same builders its ``run`` sends them with; what
only AWS knows (the account, the default bucket, the execution role, a KMS alias's key) is a
placeholder in angle brackets unless set, and counts come from the artifacts the run folder
has recorded, or else from the source files or PCam's split sizes. :class:`StagePlanner`
collects one stage's requests and prices them:

- instance-hours at ``aws.prices`` (USD per instance-hour), for the region
  ``aws.prices_region`` names;
- every billable request (S3 ``PutObject``, ``GetObject``, ``ListObjectsV2``, KMS data keys)
  at ``aws.request_prices`` (USD per 1,000 requests), or else at the list prices of
  :data:`REQUEST_PRICES`, which are those of us-east-1 and say so.

Each request is checked against botocore's model of its API (:func:`check_request`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcamflow.errors import ConfigError
from pcamflow.plan import CostLine, Plan, PlannedRequest
from pcamflow.sagemaker.requests import Resolved, check_request
from pcamflow.sagemaker.s3 import S3Uri, run_prefix
from pcamflow.stages import Context

if TYPE_CHECKING:
    from pcamflow.artifacts import Manifests

__all__ = [
    "ACCOUNT",
    "PCAM_SIZES",
    "REQUEST_PRICES",
    "REQUEST_PRICES_REGION",
    "StagePlanner",
    "planned_counts",
    "planned_manifests",
    "planned_region",
    "planned_resolved",
    "planned_root",
    "source_counts",
]

ACCOUNT = "<account>"
PCAM_SIZES = {"train": 262_144, "valid": 32_768, "test": 32_768}
REQUEST_PRICES = {
    "s3:PutObject": 0.005,
    "s3:ListObjectsV2": 0.005,
    "s3:GetObject": 0.0004,
    "s3:HeadObject": 0.0004,
    "kms:GenerateDataKey": 0.003,
    "kms:Decrypt": 0.003,
}
"""USD per 1,000 requests: S3 Standard (PUT/LIST $0.005, GET/HEAD $0.0004) and KMS ($0.03 per
10,000) list prices of the S3 and KMS pricing pages, for us-east-1."""
REQUEST_PRICES_REGION = "us-east-1"


def planned_region(settings: Any) -> str:
    """``aws.region``, or the AWS configuration's default region.

    Raises:
        ConfigError: neither names a region.
    """
    if settings.aws.region:
        return str(settings.aws.region)
    import botocore.session

    region = botocore.session.get_session().get_config_variable("region")
    if not region:
        raise ConfigError("aws.region: not set, and the AWS configuration names no region")
    return str(region)


def planned_resolved(settings: Any) -> Resolved:
    """The values a run resolves from AWS, as set or as placeholders (no request is sent)."""
    from pcamflow.sagemaker.requests import algorithm_image

    aws = settings.aws
    region = planned_region(settings)
    key = aws.kms_key_id
    if key and (key.startswith("alias/") or ":alias/" in key):
        key = f"arn:aws:kms:{region}:{ACCOUNT}:key/<key of {key.rsplit(':', 1)[-1]}>"
    return Resolved(
        region=region,
        role_arn=aws.role_arn or f"arn:aws:iam::{ACCOUNT}:role/<SageMaker execution role>",
        bucket=aws.bucket or f"sagemaker-{region}-{ACCOUNT}",
        image_uri=algorithm_image(region),
        kms_key_id=key,
    )


def planned_root(context: Context, resolved: Resolved) -> S3Uri:
    """The run's S3 prefix, with ``<run id>`` before the run folder has one."""
    aws = context.settings.aws
    return run_prefix(resolved.bucket, aws.prefix, context.run_dir, context.run_id or "<run id>")


def source_counts(settings: Any) -> tuple[dict[str, int], bool]:
    """Images per split of ``data.source`` (read from its label files), or PCam's sizes.

    Returns:
        (split -> count, whether the counts were read from files).
    """
    import h5py

    counts, read = {}, True
    for split in settings.data.splits:
        path = Path(settings.data.source) / f"camelyonpatch_level_2_split_{split}_y.h5"
        try:
            with h5py.File(path, "r") as handle:
                counts[split] = int(handle["y"].shape[0])
        except (OSError, KeyError):
            counts[split], read = PCAM_SIZES[split], False
    return counts, read


def planned_counts(context: Context) -> tuple[dict[str, int], str | None]:
    """Images per split of the manifests: recorded, or estimated (with a note saying how)."""
    from pcamflow.artifacts import Manifests

    manifests = context.optional_input(Manifests)
    if manifests is not None and manifests.counts:
        return dict(manifests.counts), None
    settings = context.settings
    sizes, read = source_counts(settings)
    cap = settings.manifests.max_per_class
    counts = {s: min(n, 2 * cap) if cap else n for s, n in sizes.items()}
    source = "counted in data.source" if read else "PCam's split sizes"
    return counts, f"image counts are estimates ({source}; no finished manifests stage yet)"


def planned_manifests(context: Context, resolved: Resolved,
                      planner: StagePlanner) -> tuple[Manifests, dict[str, int]]:
    """The manifests a stage's requests name, and the images per split.

    The run's manifests when a manifests stage has finished; otherwise where the run will put
    them (under its S3 prefix), with the counts estimated and a note on ``planner`` saying so.
    """
    from pcamflow.artifacts import Manifests

    manifests = context.optional_input(Manifests)
    counts, estimated = planned_counts(context)
    if manifests is None:
        root = planned_root(context, resolved)
        manifests = Manifests(
            manifests={s: str(root.join("manifests", f"{s}.manifest")) for s in counts},
            counts=counts)
    if estimated:
        planner.notes.append(estimated)
    return manifests, counts


class StagePlanner:
    """Collects one stage's requests and costs, and checks the requests.

    Args:
        context: the stage's context (its name, the settings).
        region: the region the requests go to.
    """

    def __init__(self, context: Context, region: str) -> None:
        self.stage = context.stage_name or "stage"
        self.aws = context.settings.aws
        self.region = region
        # in local mode nothing is billed: the requests are shown, at no cost
        self.free = bool(getattr(context.service("aws"), "local_mode", False))
        self.requests: list[PlannedRequest] = []
        self.costs: list[CostLine] = []
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def request(self, service: str, operation: str, params: dict[str, Any],
                count: int = 1) -> None:
        """A request that is not billed by itself (``CreateTrainingJob``, ...)."""
        if count > 0:
            self.requests.append(PlannedRequest(self.stage, service, operation, dict(params),
                                                count=count, region=self.region))

    def billed(self, service: str, operation: str, params: dict[str, Any], count: int,
               note: str = "") -> None:
        """``count`` requests billed per request, priced per 1,000."""
        if count <= 0:
            return
        self.request(service, operation, params, count)
        if self.free:
            return
        key = f"{service}:{operation}"
        if key in self.aws.request_prices:
            price, region = self.aws.request_prices[key], self.aws.prices_region
        else:
            price, region = REQUEST_PRICES.get(key), REQUEST_PRICES_REGION
        self.costs.append(CostLine(self.stage, f"{service} {operation}", count / 1000,
                                   "1,000 requests", price, region, note))

    def instance_hours(self, instance_type: str, instances: int, hours: float,
                       note: str = "") -> None:
        """Instances billed per hour, priced from ``aws.prices``."""
        if self.free:
            return
        self.costs.append(CostLine(self.stage, instance_type, instances * hours,
                                   "instance-hour", self.aws.prices.get(instance_type),
                                   self.aws.prices_region, note))

    def plan(self) -> Plan:
        """The stage's plan, every request checked against botocore's model.

        Raises:
            ConfigError: a request does not fit its API; every problem is listed.
        """
        problems = []
        for planned in self.requests:
            try:
                check_request(planned.service, planned.operation, planned.params)
            except ConfigError as error:
                problems.append(f"[{planned.stage}] {error}")
        if problems:
            raise ConfigError("the plan has invalid requests:\n" + "\n".join(problems))
        notes = list(self.notes)
        if self.free:
            notes.append("SageMaker local mode: these requests go to this machine; nothing is "
                         "billed")
        used = {c.price_region for c in self.costs if c.price is not None}
        if any(c.price is not None and c.unit == "instance-hour" and c.price_region is None
               for c in self.costs):
            notes.append(f"aws.prices: set aws.prices_region to say which region they are for "
                         f"(this run is in {self.region})")
        for other in sorted(r for r in used if r and r != self.region):
            source = ("S3/KMS list prices" if other == REQUEST_PRICES_REGION
                      and other != self.aws.prices_region else "aws.prices")
            notes.append(f"{source} are for {other}, this run is in {self.region}: set "
                         f"aws.prices_region and aws.request_prices for {self.region}")
        return Plan(requests=tuple(self.requests), costs=tuple(self.costs),
                    notes=tuple(notes), warnings=tuple(self.warnings))
