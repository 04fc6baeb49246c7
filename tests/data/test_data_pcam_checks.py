"""check_split, the quick checks of a PCam folder (no decompression, no hashing), exactly."""

from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pytest

from pcamflow.data._files import pcam_name
from pcamflow.data.pcam import PUBLISHED_CHECKSUMS, check_split
from pcamflow.errors import ChecksumError, DataError, SchemaError


def _error(kind: type[Exception], *args: object, **kwargs: object) -> str:
    with pytest.raises(kind) as caught:
        check_split(*args, **kwargs)
    return str(caught.value)


def _split(folder: Path, split: str = "valid", *, n: int = 4, marked: bool = False,
           x: object = None, y: object = None) -> Path:
    """PCam's two files of ``split`` in ``folder``: x (N, 96, 96, 3) uint8, y (N, 1, 1, 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    x = np.zeros((n, 96, 96, 3), np.uint8) if x is None else x
    y = np.zeros((n, 1, 1, 1), np.uint8) if y is None else y
    for key, data in (("x", x), ("y", y)):
        with h5py.File(folder / pcam_name(split, key), "w") as handle:
            handle[key] = data
            if marked:
                handle.attrs["pcamflow_synthetic"] = 1
    return folder


def test_a_split_and_a_folder_that_do_not_exist(tmp_path: Path) -> None:
    assert _error(DataError, tmp_path, "holdout") == (
        "split 'holdout' is not one of train, valid, test")
    assert _error(DataError, tmp_path / "none", "valid") == (
        f"{tmp_path / 'none'}: PCam source folder not found")
    assert check_split(tmp_path / "none", "valid", missing_ok=True) is None
    assert _error(DataError, tmp_path, "valid") == (
        f"valid: missing file {tmp_path / pcam_name('valid', 'x')} "
        f"(or {pcam_name('valid', 'x', gz=True)}) in {tmp_path}")
    check_split(tmp_path, "valid", missing_ok=True)  # both to be downloaded


def test_a_gz_must_be_gzip(tmp_path: Path) -> None:
    _split(tmp_path, n=4)
    gz = tmp_path / pcam_name("valid", "y", gz=True)
    (tmp_path / pcam_name("valid", "y")).rename(gz)  # HDF5 under a .gz name
    assert _error(DataError, tmp_path, "valid", verify_checksums=False) == (
        f"{gz}: not a gzip file")


def test_a_gz_not_yet_decompressed_is_checked_by_its_published_size(tmp_path: Path) -> None:
    _split(tmp_path, n=4)
    plain = tmp_path / pcam_name("valid", "y")
    gz = tmp_path / pcam_name("valid", "y", gz=True)
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    size, sha = PUBLISHED_CHECKSUMS[gz.name]
    message = _error(ChecksumError, tmp_path, "valid")
    assert message == (
        f"{gz}: does not match the published PCam checksum (expected size {size}, SHA-256 "
        f"{sha}; found size {gz.stat().st_size}); download it again, or set "
        "data.verify_checksums = false for a file of your own")
    check_split(tmp_path, "valid", verify_checksums=False)
    check_split(tmp_path, "valid", verify_checksums=False, cache_dir=tmp_path / "cache")


def test_a_plain_file_named_like_pcam_must_hold_its_patch_count(tmp_path: Path) -> None:
    _split(tmp_path, "test", n=3)
    assert _error(ChecksumError, tmp_path, "test") == (
        f"{tmp_path / pcam_name('test', 'x')}: named like PCam's test split but holds 3 "
        "patches, not 32768; set data.verify_checksums = false for a file of your own")
    check_split(tmp_path, "test", verify_checksums=False)
    _split(tmp_path / "ours", "test", n=3, marked=True)  # synthetic PCam: no published count
    check_split(tmp_path / "ours", "test")


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.zeros((2, 96, 96), np.uint8), None, "'x' has shape (2, 96, 96), expected (N, 96, 96, 3)"),
    (np.zeros((2, 96, 96, 1), np.uint8), None,
     "'x' has shape (2, 96, 96, 1), expected (N, 96, 96, 3)"),
    (np.zeros((2, 96, 96, 3), np.float32), None, "'x' has dtype float32, expected uint8"),
    (None, np.zeros((2, 1, 1), np.uint8),
     "'y' has shape (2, 1, 1), expected (N, 1, 1, 1) or (N,)"),
    (None, np.zeros((2, 2), np.uint8), "'y' has shape (2, 2), expected (N, 1, 1, 1) or (N,)"),
    (None, np.zeros((2, 1, 1, 1), np.float32), "'y' has dtype float32, expected an integer type"),
])
def test_the_layout_is_checked_by_key_shape_and_dtype(tmp_path: Path, x, y, message) -> None:
    _split(tmp_path, n=2, x=x, y=y, marked=True)
    key = "x" if message.startswith("'x'") else "y"
    assert _error(SchemaError, tmp_path, "valid") == (
        f"{tmp_path / pcam_name('valid', key)}: {message}")


def test_flat_labels_are_taken(tmp_path: Path) -> None:
    _split(tmp_path, n=2, y=np.array([0, 1], np.int64), marked=True)
    check_split(tmp_path, "valid")


def test_counts_keys_and_groups(tmp_path: Path) -> None:
    _split(tmp_path, n=3, y=np.zeros((2, 1, 1, 1), np.uint8), marked=True)
    assert _error(SchemaError, tmp_path, "valid") == (
        f"valid: {pcam_name('valid', 'x')} holds 3 patches but {pcam_name('valid', 'y')} "
        "holds 2 labels")
    _split(tmp_path, n=0, marked=True)
    assert _error(SchemaError, tmp_path, "valid") == (
        f"{tmp_path / pcam_name('valid', 'x')}: split 'valid' is empty (0 patches)")
    _split(tmp_path, n=2, marked=True)
    with h5py.File(tmp_path / pcam_name("valid", "y"), "w") as handle:
        handle["labels"] = np.zeros(2, np.uint8)
        handle["other"] = np.zeros(2, np.uint8)
    assert _error(SchemaError, tmp_path, "valid") == (
        f"{tmp_path / pcam_name('valid', 'y')}: no key 'y' (keys: ['labels', 'other'])")
    with h5py.File(tmp_path / pcam_name("valid", "x"), "w") as handle:
        handle.create_group("x")
    assert _error(SchemaError, tmp_path, "valid").startswith(
        f"{tmp_path / pcam_name('valid', 'y')}: no key 'y'")
    with h5py.File(tmp_path / pcam_name("valid", "y"), "w") as handle:
        handle["y"] = np.zeros((2, 1, 1, 1), np.uint8)
    assert _error(SchemaError, tmp_path, "valid") == (
        f"{tmp_path / pcam_name('valid', 'x')}: 'x' and {tmp_path / pcam_name('valid', 'y')}: "
        "'y' must be datasets, not groups")
    with h5py.File(tmp_path / pcam_name("valid", "x"), "w") as handle:
        handle["images"] = np.zeros((2, 96, 96, 3), np.uint8)
    assert _error(SchemaError, tmp_path, "valid") == (
        f"{tmp_path / pcam_name('valid', 'x')}: no key 'x' (keys: ['images'])")


def test_a_marker_on_one_file_only_is_not_synthetic(tmp_path: Path) -> None:
    _split(tmp_path, "test", n=3, marked=True)
    with h5py.File(tmp_path / pcam_name("test", "y"), "a") as handle:
        del handle.attrs["pcamflow_synthetic"]
    assert "named like PCam's test split" in _error(ChecksumError, tmp_path, "test")
