"""Checks for the optional extras, cheap enough to run at import time."""

from __future__ import annotations

import importlib.util

from pcamflow.errors import MissingExtraError

EXTRAS = {
    "local": ("torch", "optuna", "fastapi", "uvicorn", "safetensors"),
    "sagemaker": ("boto3", "sagemaker.core"),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, where: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` if one of its modules is missing."""
    for module in EXTRAS[extra]:
        if not _installed(module):
            raise MissingExtraError(extra, where)
