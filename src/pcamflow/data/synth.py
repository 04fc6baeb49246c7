"""Synthetic PCam: files laid out exactly like PatchCamelyon, made of H&E-like patches.

:func:`write_synthetic_pcam` writes ``camelyonpatch_level_2_split_{split}_{x,y}.h5`` (or
``.h5.gz``) and ``..._meta.csv`` per split: ``x`` (N, 96, 96, 3) uint8 RGB, ``y`` (N, 1, 1, 1)
uint8, the meta table with PCam's columns. Patches show pink stroma, purple nuclei of varied
size and density and white gaps; label 1 means a cluster of tumour-like cells (larger, darker,
crowded, irregular nuclei) lies in the centre 32x32 square. Every patch holds the same random
number (1-3) of such clusters, so tumour-like cells outside the centre are common in both
classes and whole-patch colour statistics say next to nothing about the label.

``difficulty`` (0..1, default :data:`DEFAULT_DIFFICULTY`) sets how hard the task is: at 0
every tumour cluster is large and dark and a small network scores an AUC of 1.000; the
default adds small, faint foci and dark look-alike aggregates, so that the demo's model scores
an AUC in the mid 0.90s, as good models do on the real PCam (see :mod:`._tissue`).

Output is deterministic by seed (each chunk of patches has its own generator, derived from the
seed, the split and the chunk's index), classes are balanced (``N // 2`` positives), and
patches are written in chunks, so memory stays bounded whatever N is. Files are written to a
temporary name and renamed when complete. Each HDF5 file carries the attribute
``pcamflow_synthetic = 1`` (and the seed and difficulty), which tells the PCam reader not to
check it against the published checksums of the real files; the meta table names its slides
``synthetic_*``.

Writing never destroys data: a PCam-named file in the output folder that is not synthetic PCam
written by pcamflow (a real PCam download, say) is never replaced or deleted; the call refuses,
naming it, before it writes anything.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import shutil
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from pcamflow._io import PARTIAL_SUFFIX, atomic_path
from pcamflow.data._files import SPLITS, pcam_name, writable_folder
from pcamflow.data._gzip import sidecar
from pcamflow.data._tissue import SIZE, render_chunk
from pcamflow.errors import DataError

__all__ = [
    "CHUNK",
    "DEFAULT_DIFFICULTY",
    "SYNTHETIC_ATTR",
    "is_synthetic",
    "write_synthetic_pcam",
]

CHUNK = 256
"""Patches rendered and written at a time (part of the seed derivation: do not change)."""

SYNTHETIC_ATTR = "pcamflow_synthetic"
"""HDF5 file attribute that marks a synthetic file."""

DEFAULT_DIFFICULTY = 0.8
"""The difficulty that puts a good model's test AUC in the mid 0.90s, as on the real PCam."""

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_MARK_WINDOW = 1 << 16
_META_HEADER = ",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n"
_META_SLIDE = "synthetic_"
_PATCHES_PER_SLIDE = 512


def write_synthetic_pcam(
    out_dir: str | Path,
    *,
    train: int,
    valid: int,
    test: int,
    seed: int = 0,
    difficulty: float = DEFAULT_DIFFICULTY,
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
        difficulty: 0 (an easy task) to 1 (a hard one); see the module's docstring.
        gzip: write ``.h5.gz`` files, as PCam is distributed, instead of ``.h5``.
        progress: show a progress bar.

    Returns:
        ``"<split>_x"``, ``"<split>_y"`` and ``"<split>_meta"`` -> the path written, for
        each split written.

    Raises:
        DataError: a count or the difficulty is out of range, the folder is not writable, or
            it holds a PCam-named file that is not synthetic PCam (nothing is written then).
    """
    counts = {"train": train, "valid": valid, "test": test}
    for split, count in counts.items():
        if not isinstance(count, int | np.integer) or count < 0:
            raise DataError(f"synthetic PCam: {split}: {count!r} is not a count of patches (>= 0)")
    if not isinstance(difficulty, int | float) or not 0.0 <= difficulty <= 1.0:
        raise DataError(f"synthetic PCam: difficulty {difficulty!r} is outside [0, 1]")
    out = writable_folder(out_dir)
    splits = [split for split in SPLITS if counts[split] > 0]
    for split in splits:  # before anything is written
        for path in _replaced(out, split):
            if path.exists() and not is_synthetic(path):
                raise DataError(
                    f"{path}: exists and is not synthetic PCam written by pcamflow; refusing "
                    "to replace it (write into another folder, or move the file away)"
                )
    written: dict[str, Path] = {}
    with tqdm(
        total=sum(counts.values()),
        unit="patch",
        desc="synthetic PCam",
        disable=None if progress else True,
    ) as bar:
        for split in splits:
            written.update(_write_split(out, split, SPLITS.index(split), int(counts[split]),
                                        seed, float(difficulty), gzip, bar))
    return written


def is_synthetic(path: str | Path) -> bool:
    """Whether ``path`` is a synthetic PCam file written by pcamflow.

    An HDF5 file must carry :data:`SYNTHETIC_ATTR`; of a gzipped one only the start is
    decompressed (HDF5 keeps the root group's attributes there), since opening it whole
    would decompress gigabytes of a real PCam file. A meta table must have PCam's header
    and name its first slide ``synthetic_*``. Anything unreadable is not synthetic.
    """
    path = Path(path)
    try:
        if path.name.endswith(".csv"):
            with open(path, encoding="utf-8", newline="") as f:
                header, first = f.readline(), f.readline()
            slide = first.rstrip("\n").rsplit(",", 1)[-1]
            return header == _META_HEADER and slide.startswith(_META_SLIDE)
        if path.name.endswith(".gz"):
            with gzip_module.open(path, "rb") as f:
                head = f.read(_MARK_WINDOW)
            return head.startswith(_HDF5_SIGNATURE) and SYNTHETIC_ATTR.encode() in head
        with h5py.File(path, "r") as handle:
            return bool(handle.attrs.get(SYNTHETIC_ATTR, 0))
    except (OSError, EOFError, ValueError, UnicodeDecodeError):
        return False


def _replaced(out: Path, split: str) -> list[Path]:
    """Every file that writing ``split`` replaces or removes (both formats, and the table)."""
    paths = [out / pcam_name(split, "meta")]
    for key in ("x", "y"):
        paths += [out / pcam_name(split, key), out / pcam_name(split, key, gz=True)]
    return paths


def _labels(n: int, seed: int, split_index: int) -> np.ndarray:
    """Balanced labels in a random order: ``n // 2`` ones."""
    labels = np.zeros(n, dtype=np.uint8)
    labels[: n // 2] = 1
    rng = np.random.default_rng([seed, split_index, 0xA11])
    return rng.permutation(labels)


@contextlib.contextmanager
def _h5_output(target: Path, gz: bool) -> Iterator[Path]:
    """A temporary path to write an HDF5 file into; it becomes ``target`` or ``target.gz``.

    With ``gz`` the plain ``target`` is never written: the temporary file is compressed
    straight into ``target.gz``. The other format's file, if any (checked to be synthetic
    before), is removed afterwards, so the folder never holds two versions of one file.
    """
    final = target.with_name(target.name + ".gz") if gz else target
    other = target if gz else final.with_name(final.name + ".gz")
    with atomic_path(final) as tmp:
        if not gz:
            yield tmp
        else:
            plain = tmp.with_name(tmp.name[: -len(PARTIAL_SUFFIX)] + ".h5" + PARTIAL_SUFFIX)
            try:
                yield plain
                _gzip(plain, tmp, target.name)
            finally:
                plain.unlink(missing_ok=True)
    other.unlink(missing_ok=True)
    sidecar(target).unlink(missing_ok=True)  # the plain file is no decompressed .gz any more


def _write_split(out: Path, split: str, split_index: int, n: int, seed: int,
                 difficulty: float, gz: bool, bar: tqdm) -> dict[str, Path]:
    labels = _labels(n, seed, split_index)
    x_path = out / pcam_name(split, "x")
    y_path = out / pcam_name(split, "y")
    meta_path = out / pcam_name(split, "meta")
    clusters = np.empty(n, dtype=np.uint8)
    with _h5_output(x_path, gz) as tmp, h5py.File(tmp, "w") as f:
        _mark(f, seed, difficulty)
        x = f.create_dataset("x", shape=(n, SIZE, SIZE, 3), dtype=np.uint8)
        for start in range(0, n, CHUNK):
            stop = min(start + CHUNK, n)
            rng = np.random.default_rng([seed, split_index, 1 + start // CHUNK])
            patches, k = render_chunk(rng, labels[start:stop], difficulty)
            x[start:stop] = patches
            clusters[start:stop] = k
            bar.update(stop - start)
    with _h5_output(y_path, gz) as tmp, h5py.File(tmp, "w") as f:
        _mark(f, seed, difficulty)
        f.create_dataset("y", data=labels.reshape(n, 1, 1, 1))
    _write_meta(meta_path, labels, clusters, split, seed, split_index)
    suffix = ".gz" if gz else ""
    return {
        f"{split}_x": x_path.with_name(x_path.name + suffix),
        f"{split}_y": y_path.with_name(y_path.name + suffix),
        f"{split}_meta": meta_path,
    }


def _mark(f: h5py.File, seed: int, difficulty: float) -> None:
    f.attrs[SYNTHETIC_ATTR] = 1
    f.attrs["seed"] = seed
    f.attrs["difficulty"] = difficulty


def _write_meta(path: Path, labels: np.ndarray, clusters: np.ndarray, split: str, seed: int,
                split_index: int) -> None:
    """The meta table with PCam's columns; coordinates are made up, one fake slide per 512."""
    rng = np.random.default_rng([seed, split_index, 0x3E7A])
    n = len(labels)
    coords = rng.integers(0, 2000, (n, 2)) * 32
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(_META_HEADER)
        for i in range(n):
            slide = f"{_META_SLIDE}{split}_{i // _PATCHES_PER_SLIDE:03d}"
            f.write(
                f"{i},{coords[i, 0]},{coords[i, 1]},{bool(clusters[i])},"
                f"{bool(labels[i])},{slide}\n"
            )


def _gzip(source: Path, target: Path, name: str) -> None:
    """Compress ``source`` into ``target``, recording ``name`` in the gzip header."""
    # level 1: synthetic files are compressed for realism, not to save space
    with (
        open(source, "rb") as src,
        open(target, "wb") as raw,
        gzip_module.GzipFile(filename=name, mode="wb", fileobj=raw, compresslevel=1,
                             mtime=0) as dst,
    ):
        shutil.copyfileobj(src, dst, 1 << 20)
