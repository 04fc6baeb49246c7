"""`pcamflow` additions of the SageMaker part: ``--local-mode`` of ``run`` and ``plan``.

``pcamflow plan`` itself belongs to the core: every stage answers for its own requests.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("pcamflow")


@contextlib.contextmanager
def local_mode(settings: Any, *, progress: bool = True) -> Iterator[dict[str, Any]]:
    """SageMaker local mode for a run of ``settings``; yields the services to run with.

    The SageMaker stages then run on this machine (``pcamflow.sagemaker.localmode``), in the
    region ``aws.region`` names (``us-east-1`` without one); what they create ends with the
    command.
    """
    from pcamflow.sagemaker.localmode import LocalMode

    region = settings.aws.region or "us-east-1"
    with LocalMode(region=region, progress=progress) as local:
        log.info("SageMaker local mode (%s): nothing is sent to AWS", region)
        yield local.services()
        if local.endpoints:
            log.info("SageMaker local mode: its endpoints (%s) end with this command",
                     ", ".join(sorted(local.endpoints)))


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser (none of its own)."""
