"""Fixtures of the local trainer's tests: small synthetic PCam as JPEGs and manifests."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from pcamflow.artifacts import Manifests
from pcamflow.data.synth import DEFAULT_DIFFICULTY, write_synthetic_pcam


def write_manifests(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Manifests:
    """Write ``<root>/<split>/<label>/<split>_<i>.jpg`` and one manifest per split."""
    manifests, counts = {}, {}
    for split, (x, y) in splits.items():
        lines = []
        for i, (patch, label) in enumerate(zip(x, y, strict=True)):
            path = root / split / str(int(label)) / f"{split}_{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch).save(path, quality=95)
            record = {"source-ref": path.resolve().as_uri(), "class": str(int(label))}
            lines.append(json.dumps(record))
        manifest = root / f"{split}.manifest"
        manifest.write_text("\n".join(lines) + "\n")
        manifests[split], counts[split] = str(manifest), len(lines)
    return Manifests(manifests=manifests, counts=counts, image_root=str(root))


def synthetic_splits(tmp: Path, train: int, valid: int, test: int, seed: int = 0,
                     difficulty: float = DEFAULT_DIFFICULTY):
    """Synthetic PCam arrays per split, as (x, y)."""
    paths = write_synthetic_pcam(tmp / "h5", train=train, valid=valid, test=test, seed=seed,
                                 difficulty=difficulty, progress=False)
    out = {}
    for split in ("train", "valid", "test"):
        if f"{split}_x" not in paths:
            continue
        with h5py.File(paths[f"{split}_x"]) as fx, h5py.File(paths[f"{split}_y"]) as fy:
            out[split] = (fx["x"][:], fy["y"][:].reshape(-1).astype(int))
    return out


@pytest.fixture(scope="session")
def small_pcam(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifests, dict]:
    """A tiny synthetic PCam: 48 train, 24 valid, 16 test images, with manifests."""
    tmp = tmp_path_factory.mktemp("small_pcam")
    splits = synthetic_splits(tmp, 48, 24, 16)
    return write_manifests(tmp / "images", splits), splits


@pytest.fixture(scope="session")
def pcam_tools():
    """The helpers above, for tests that make their own data."""
    return synthetic_splits, write_manifests
