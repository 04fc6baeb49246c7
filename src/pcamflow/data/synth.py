"""Synthetic PCam: files laid out exactly like PatchCamelyon, made of H&E-like patches.

:func:`write_synthetic_pcam` writes ``camelyonpatch_level_2_split_{split}_{x,y}.h5`` (or
``.h5.gz``) and ``..._meta.csv`` per split: ``x`` (N, 96, 96, 3) uint8 RGB, ``y`` (N, 1, 1, 1)
uint8, the meta table with PCam's columns. Patches show pink stroma, purple nuclei of varied
size and density and white gaps; label 1 means a cluster of tumour-like cells (larger, darker,
crowded, irregular nuclei) lies in the centre 32x32 square. Every patch holds the same random
number (1-3) of such clusters, so tumour-like cells outside the centre are common in both
classes and whole-patch colour statistics say next to nothing about the label.

Output is deterministic by seed (each chunk of patches has its own generator, derived from the
seed, the split and the chunk's index), classes are balanced (``N // 2`` positives), and
patches are written in chunks, so memory stays bounded whatever N is. Files are written to a
temporary name and renamed when complete. Each HDF5 file carries the attribute
``pcamflow_synthetic = 1``, which tells the PCam reader not to check it against the published
checksums of the real files.
"""

from __future__ import annotations

import gzip as gzip_module
import shutil
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from pcamflow._io import atomic_path
from pcamflow.data._files import SPLITS, pcam_name
from pcamflow.data._tissue import SIZE, render_chunk
from pcamflow.errors import DataError

__all__ = ["CHUNK", "SYNTHETIC_ATTR", "write_synthetic_pcam"]

CHUNK = 256
"""Patches rendered and written at a time (part of the seed derivation: do not change)."""

SYNTHETIC_ATTR = "pcamflow_synthetic"
"""HDF5 file attribute that marks a synthetic file."""

_META_HEADER = ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
_PATCHES_PER_SLIDE = 512


def write_synthetic_pcam(
    out_dir: str | Path,
    *,
    train: int,
    valid: int,
    test: int,
    seed: int = 0,
    gzip: bool = False,
    progress: bool = True,
) -> dict[str, Path]:
    """Write synthetic PCam files for the three splits.

    Args:
        out_dir: the folder to write into (made if missing).
        train: patches in the train split (0: the split is not written).
        valid: patches in the valid split.
        test: patches in the test split.
        seed: the seed everything is derived from.
        gzip: write ``.h5.gz`` files, as PCam is distributed, instead of ``.h5``.
        progress: show a progress bar.

    Returns:
        ``"<split>_x"``, ``"<split>_y"`` and ``"<split>_meta"`` -> the path written, for
        each split written.

    Raises:
        DataError: a count is negative.
    """
    counts = {"train": train, "valid": valid, "test": test}
    for split, count in counts.items():
        if not isinstance(count, int | np.integer) or count < 0:
            raise DataError(f"synthetic PCam: {split}: {count!r} is not a count of patches (>= 0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with tqdm(
        total=sum(counts.values()),
        unit="patch",
        desc="synthetic PCam",
        disable=None if progress else True,
    ) as bar:
        for split_index, split in enumerate(SPLITS):
            n = int(counts[split])
            if n == 0:
                continue
            written.update(_write_split(out, split, split_index, n, seed, gzip, bar))
    return written


def _labels(n: int, seed: int, split_index: int) -> np.ndarray:
    """Balanced labels in a random order: ``n // 2`` ones."""
    labels = np.zeros(n, dtype=np.uint8)
    labels[: n // 2] = 1
    rng = np.random.default_rng([seed, split_index, 0xA11])
    return rng.permutation(labels)


def _write_split(out: Path, split: str, split_index: int, n: int, seed: int, gz: bool,
                 bar: tqdm) -> dict[str, Path]:
    labels = _labels(n, seed, split_index)
    x_path = out / pcam_name(split, "x")
    y_path = out / pcam_name(split, "y")
    meta_path = out / pcam_name(split, "meta")
    clusters = np.empty(n, dtype=np.uint8)
    with atomic_path(x_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[SYNTHETIC_ATTR] = 1
        f.attrs["seed"] = seed
        x = f.create_dataset("x", shape=(n, SIZE, SIZE, 3), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            rng = np.random.default_rng([seed, split_index, 1 + start // CHUNK])
            patches, k = render_chunk(rng, labels[start:stop])
            x[start:stop] = patches
            clusters[start:stop] = k
            bar.update(stop - start)
    with atomic_path(y_path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs[SYNTHETIC_ATTR] = 1
        f.attrs["seed"] = seed
        f.create_dataset("y", data=labels.reshape(n, 1, 1, 1))
    _write_meta(meta_path, labels, clusters, split, seed, split_index)
    paths = {f"{split}_x": x_path, f"{split}_y": y_path, f"{split}_meta": meta_path}
    if gz:
        for key in (f"{split}_x", f"{split}_y"):
            paths[key] = _gzip(paths[key])
    return paths


def _write_meta(path: Path, labels: np.ndarray, clusters: np.ndarray, split: str, seed: int,
                split_index: int) -> None:
    """The meta table with PCam's columns; coordinates are made up, one fake slide per 512."""
    rng = np.random.default_rng([seed, split_index, 0x3E7A])
    n = len(labels)
    coords = rng.integers(0, 2000, (n, 2)) * 32
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(_META_HEADER)
        for i in range(n):
            slide = f"synthetic_{split}_{i // _PATCHES_PER_SLIDE:03d}"
            f.write(
                f"{i},{coords[i, 0]},{coords[i, 1]},{bool(clusters[i])},"
                f"{bool(labels[i])},{slide}\n"
            )


def _gzip(path: Path) -> Path:
    """Compress ``path`` to ``path.gz`` (atomically) and remove ``path``."""
    target = path.with_name(path.name + ".gz")
    # level 1: synthetic files are compressed for realism, not to save space
    with (
        atomic_path(target) as tmp,
        open(path, "rb") as src,
        open(tmp, "wb") as raw,
        gzip_module.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=1,
                             mtime=0) as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 20)
    path.unlink()
    return target
