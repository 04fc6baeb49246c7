"""PCam file names and output folders, shared by the data modules."""

from __future__ import annotations

import os
from pathlib import Path

from pcamflow._io import PARTIAL_SUFFIX
from pcamflow.errors import DataError

__all__ = [
    "PREFIX",
    "SPLITS",
    "pcam_name",
    "writable_folder",
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


def writable_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Make ``folder`` if missing and prove that a file can be written there, before any work.

    Every data command checks its output this way, so a read-only or misplaced destination
    is the same clear error (exit status 2) whichever command meets it.

    Raises:
        DataError: naming the folder (or the part of its path that is in the way).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}{PARTIAL_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        where = error.filename or folder
        raise DataError(f"{where}: {what} is not writable ({error.strerror or error})") from None
    return folder
