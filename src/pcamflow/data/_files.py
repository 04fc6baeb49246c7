"""PCam file names and small file-system helpers shared by the data modules."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PREFIX",
    "SPLITS",
    "atomic_path",
    "pcam_name",
]

PREFIX = "camelyonpatch_level_2_split"
SPLITS = ("train", "valid", "test")


def pcam_name(split: str, key: str, *, gz: bool = False) -> str:
    """PCam's file name for a split and key (``x``, ``y`` or ``meta``).

    >>> pcam_name("valid", "x", gz=True)
    'camelyonpatch_level_2_split_valid_x.h5.gz'
    """
    if key == "meta":
        return f"{PREFIX}_{split}_meta.csv"
    return f"{PREFIX}_{split}_{key}.h5" + (".gz" if gz else "")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    On error the temporary file is removed, so ``target`` is either absent, its old self,
    or complete: never half written.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
