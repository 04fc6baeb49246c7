"""`pcamflow` sub-commands of the SageMaker part (none of its own yet).

``pcamflow plan`` belongs to the core: every stage answers for its own requests.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
