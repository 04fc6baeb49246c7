"""Checks for the optional extras, cheap enough to run at import time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pcamflow.errors import MissingExtraError

EXTRAS = {
    "local": ("torch", "optuna", "fastapi", "uvicorn", "safetensors", "psutil", "filelock"),
    "sagemaker": ("boto3", "sagemaker.core"),
    "localmode": ("moto",),
    "mlflow": ("mlflow",),
}


def _installed(module: str) -> bool:
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None or not rest:
        return spec is not None
    # find_spec("a.b") imports package "a" (sagemaker's __init__ takes seconds): look on disk
    for location in spec.submodule_search_locations or ():
        path = Path(location, *rest.split("."))
        if path.is_dir() or path.with_suffix(".py").exists():
            return True
    return False


def require(extra: str, where: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` if one of its modules is missing."""
    for module in EXTRAS[extra]:
        if not _installed(module):
            raise MissingExtraError(extra, where)
