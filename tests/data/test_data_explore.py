"""The exploration report: montages, balance, channel statistics and duplicates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from pcamflow.data._files import pcam_name
from pcamflow.data.explore import explore, outline_centre


def _x(folder: Path, split: str) -> np.ndarray:
    with h5py.File(folder / pcam_name(split, "x"), "r") as f:
        return f["x"][...]


def test_report_counts_balance_statistics_and_duplicates(pcam_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "pcam"
    shutil.copytree(pcam_dir, source)
    train, test = _x(source, "train"), _x(source, "test")
    # plant duplicates: two repeats inside test, and three train patches copied into test
    test[1] = test[0]
    test[2] = test[0]
    test[10:13] = train[20:23]
    with h5py.File(source / pcam_name("test", "x"), "r+") as f:
        f["x"][...] = test
    index = explore(source, tmp_path / "report", per_class=6, progress=False)
    assert index.name == "index.html"
    page = index.read_text()
    for name in ("montage_0.png", "montage_1.png", "class_balance.png"):
        assert name in page
        with Image.open(index.parent / name) as image:
            assert image.format == "PNG"
    stats = json.loads((index.parent / "stats.json").read_text())
    assert stats["splits"]["test"]["duplicates"] == 2
    assert stats["splits"]["train"]["duplicates"] == 0
    assert stats["duplicates_across"] == {"train/valid": 0, "train/test": 3, "valid/test": 0}
    assert stats["splits"]["train"]["counts"] == {"0": 32, "1": 32}
    pixels = train.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(stats["splits"]["train"]["channel_mean"], pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(stats["splits"]["train"]["channel_std"], pixels.std(0), atol=1e-3)


def test_centre_outline_leaves_the_centre_untouched() -> None:
    patch = np.full((96, 96, 3), 7, np.uint8)
    out = outline_centre(patch)
    assert (out[32:64, 32:64] == 7).all()
    assert (out[31, 31:65] != 7).any(axis=-1).all() and (out[31:65, 64] != 7).any(axis=-1).all()
    assert (patch == 7).all()
