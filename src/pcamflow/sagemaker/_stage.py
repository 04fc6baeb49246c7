"""What every SageMaker stage shares: progress display and the Ctrl-C question."""

from __future__ import annotations

from collections.abc import Callable


class JobStageOptions:
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
