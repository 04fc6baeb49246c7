"""`pcamflow` sub-commands of the data part."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this part's sub-commands to the `pcamflow` parser."""
