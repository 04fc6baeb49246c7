"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcamflow.data.synth import write_synthetic_pcam

PCAM_COUNTS = {"train": 64, "valid": 32, "test": 32}
"""Patches per split in the ``pcam_dir`` fixture (balanced: half are label 1)."""


@pytest.fixture(scope="session")
def pcam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic PCam folder (``.h5`` files, counts in ``PCAM_COUNTS``), seed 0.

    Shared by the session: treat it as read-only (copy it to change it).
    """
    out = tmp_path_factory.mktemp("pcam")
    write_synthetic_pcam(out, **PCAM_COUNTS, seed=0, progress=False)
    return out
