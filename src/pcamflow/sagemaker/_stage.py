"""What every SageMaker stage shares: its AWS services, progress display, the Ctrl-C question."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class AwsStage:
    """Mixin of the SageMaker stages: they bring their AWS clients and ``s3://`` probe.

    When the caller passed ``services["aws"]``, only the ``s3://`` probe is added (made from
    those clients); otherwise new clients from ``[aws]`` with it
    (:func:`pcamflow.sagemaker.clients.services_for`). What they make and read lies in S3.
    """

    writes_to: str | None = "s3"
    reads_from: frozenset[str] | None = frozenset({"s3"})

    def provide_services(
        self, settings: Any, services: Mapping[str, Any]
    ) -> Mapping[str, Any]:
        from pcamflow.sagemaker.clients import AwsClients, services_for
        from pcamflow.sagemaker.s3 import s3_probe

        clients = services.get("aws")
        if clients is None:
            return services_for(AwsClients.from_settings(settings.aws))
        if "s3" in (services.get("probes") or {}):
            return {}
        return {"probes": {"s3": s3_probe(clients.s3)}}


class JobStageOptions(AwsStage):
    """Mixin for stages that start a SageMaker job or resource and wait for it.

    Args:
        progress: show the job's progress while waiting.
        ask: asks on Ctrl-C whether to stop (or delete) what was started (default: on the
            terminal, if any).
    """

    def __init__(
        self, *, progress: bool = True, ask: Callable[[str], bool] | None = None
    ) -> None:
        self.progress = progress
        self.ask = ask
