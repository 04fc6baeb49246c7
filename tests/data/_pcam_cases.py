"""Ways to break a copy of a PCam folder, shared by the reader and converter tests.

Each case damages the ``valid`` split of a copied folder and names the strings the error
message must contain (the file, key or value at fault).
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from pcamflow.data._files import pcam_name

X = pcam_name("valid", "x")
Y = pcam_name("valid", "y")


def copy_pcam(src: Path, dst: Path) -> Path:
    """A writable copy of a PCam folder."""
    shutil.copytree(src, dst)
    return dst


def rewrite(path: Path, key: str, data: np.ndarray, **kwargs: object) -> None:
    """Replace ``path`` with a file holding ``key`` = ``data`` (marked synthetic)."""
    path.unlink()
    with h5py.File(path, "w") as f:
        f.attrs["pcamflow_synthetic"] = 1
        f.create_dataset(key, data=data, **kwargs)


def _read(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[key][...]


def missing_file(d: Path) -> list[str]:
    (d / Y).unlink()
    return [Y]


def truncated_gz(d: Path) -> list[str]:
    raw = gzip.compress((d / X).read_bytes(), compresslevel=1)
    (d / X).unlink()
    (d / (X + ".gz")).write_bytes(raw[: len(raw) // 2])
    return [X + ".gz", "truncated"]


def not_hdf5(d: Path) -> list[str]:
    (d / X).write_bytes(b"this is not an HDF5 file\n" * 100)
    return [X, "not a readable HDF5 file"]


def wrong_key(d: Path) -> list[str]:
    rewrite(d / X, "images", _read(d / X, "x"))
    return [X, "'x'", "images"]


def wrong_shape(d: Path) -> list[str]:
    rewrite(d / X, "x", _read(d / X, "x")[:, :64, :64, :])
    return [X, "(32, 64, 64, 3)"]


def wrong_dtype(d: Path) -> list[str]:
    rewrite(d / X, "x", _read(d / X, "x").astype(np.float32))
    return [X, "float32"]


def length_mismatch(d: Path) -> list[str]:
    rewrite(d / Y, "y", _read(d / Y, "y")[:-3])
    return [X, Y, "32", "29"]


def label_two(d: Path) -> list[str]:
    y = _read(d / Y, "y")
    y[5] = 2
    rewrite(d / Y, "y", y)
    return [Y, "[5]", "is 2"]


def empty_split(d: Path) -> list[str]:
    rewrite(d / X, "x", np.zeros((0, 96, 96, 3), np.uint8), maxshape=(None, 96, 96, 3))
    rewrite(d / Y, "y", np.zeros((0, 1, 1, 1), np.uint8), maxshape=(None, 1, 1, 1))
    return [X, "empty"]


CASES: dict[str, Callable[[Path], list[str]]] = {
    f.__name__: f
    for f in (missing_file, truncated_gz, not_hdf5, wrong_key, wrong_shape, wrong_dtype,
              length_mismatch, label_two, empty_split)
}
"""Case name -> a function that damages a folder and returns what the error must name."""
