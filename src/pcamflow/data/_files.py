"""PCam file names, shared by the data modules."""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "SPLITS",
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
