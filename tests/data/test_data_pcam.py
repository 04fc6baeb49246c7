"""The PCam reader: finding, decompressing, verifying, checking and streaming splits."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _pcam_cases as _bad
import h5py
import numpy as np
import pytest

from pcamflow.data._files import pcam_name
from pcamflow.data.pcam import PUBLISHED_CHECKSUMS, PcamReader, decompress, open_split
from pcamflow.errors import ChecksumError, DataError, SchemaError


def _all(path: Path, key: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[key][...]


def test_reader_streams_every_patch_with_its_label(pcam_dir: Path) -> None:
    split = open_split(pcam_dir, "train", progress=False)
    assert split.length == 64 and split.synthetic
    x = _all(split.x_path, "x")
    y = _all(split.y_path, "y").reshape(-1)
    seen = 0
    with PcamReader(split, chunk=20) as reader:
        for start, patches, labels in reader.chunks():
            assert start == seen and len(patches) <= 20
            np.testing.assert_array_equal(patches, x[start:start + len(patches)])
            np.testing.assert_array_equal(labels, y[start:start + len(patches)])
            seen += len(patches)
    assert seen == 64


def test_any_chunking_compression_and_label_layout_reads_the_same(pcam_dir: Path,
                                                                  tmp_path: Path) -> None:
    x = _all(pcam_dir / pcam_name("valid", "x"), "x")
    y = _all(pcam_dir / pcam_name("valid", "y"), "y")
    with h5py.File(tmp_path / pcam_name("valid", "x"), "w") as f:
        f.create_dataset("x", data=x, chunks=(7, 96, 96, 3), compression="gzip", shuffle=True)
    with h5py.File(tmp_path / pcam_name("valid", "y"), "w") as f:
        f.create_dataset("y", data=y.reshape(-1).astype(np.int64), chunks=(5,), compression="lzf")
    split = open_split(tmp_path, "valid", verify_checksums=False, progress=False)
    with PcamReader(split, chunk=10) as reader:
        assert reader.chunk % 7 == 0  # reads follow the file's own chunks
        got = list(reader.chunks())
    np.testing.assert_array_equal(np.concatenate([p for _, p, _ in got]), x)
    np.testing.assert_array_equal(np.concatenate([lab for _, _, lab in got]), y.reshape(-1))


def test_gz_is_decompressed_once_atomically_and_reused(pcam_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for key in ("x", "y"):
        data = (pcam_dir / pcam_name("test", key)).read_bytes()
        (source / pcam_name("test", key, gz=True)).write_bytes(gzip.compress(data, 1))
    cache = tmp_path / "cache"
    split = open_split(source, "test", cache_dir=cache, progress=False)
    assert split.x_path.parent == cache
    assert sorted(p.name for p in source.iterdir()) == sorted(
        pcam_name("test", k, gz=True) for k in ("x", "y"))  # the source is left alone
    assert not list(cache.glob("*.partial"))
    mtime = split.x_path.stat().st_mtime_ns
    again = open_split(source, "test", cache_dir=cache, progress=False)
    assert again.x_path.stat().st_mtime_ns == mtime  # reused, not decompressed again
    np.testing.assert_array_equal(_all(again.x_path, "x"),
                                  _all(pcam_dir / pcam_name("test", "x"), "x"))


def test_multi_member_gzip_is_read_whole(pcam_dir: Path, tmp_path: Path) -> None:
    data = (pcam_dir / pcam_name("test", "y")).read_bytes()
    half = len(data) // 2
    gz = tmp_path / pcam_name("test", "y", gz=True)
    gz.write_bytes(gzip.compress(data[:half]) + gzip.compress(data[half:]))
    out, sha = decompress(gz, progress=False)
    assert out.read_bytes() == data and sha is not None and len(sha) == 64


@pytest.mark.parametrize("case", sorted(_bad.CASES))
def test_bad_input_is_an_error_naming_the_file_key_or_value(case: str, pcam_dir: Path,
                                                            tmp_path: Path) -> None:
    folder = _bad.copy_pcam(pcam_dir, tmp_path / "pcam")
    expected = _bad.CASES[case](folder)
    with pytest.raises(DataError) as error:
        open_split(folder, "valid", progress=False)
    for part in expected:
        assert part in str(error.value), (case, str(error.value))
    if case not in ("missing_file", "truncated_gz", "not_hdf5"):
        assert isinstance(error.value, SchemaError)
    assert not list(folder.glob(".*.partial"))  # a failed decompression leaves nothing


def test_file_named_like_real_pcam_must_match_published_checksum(pcam_dir: Path,
                                                                 tmp_path: Path) -> None:
    name = pcam_name("valid", "x", gz=True)
    x = _all(pcam_dir / pcam_name("valid", "x"), "x")
    with h5py.File(tmp_path / pcam_name("valid", "x"), "w") as f:  # no synthetic marker
        f.create_dataset("x", data=x)
    (tmp_path / name).write_bytes(gzip.compress((tmp_path / pcam_name("valid", "x")).read_bytes()))
    (tmp_path / pcam_name("valid", "x")).unlink()
    (tmp_path / pcam_name("valid", "y")).write_bytes(
        (pcam_dir / pcam_name("valid", "y")).read_bytes())
    with pytest.raises(ChecksumError) as error:
        open_split(tmp_path, "valid", progress=False)
    size, sha = PUBLISHED_CHECKSUMS[name]
    assert name in str(error.value) and str(size) in str(error.value) and sha in str(error.value)
    # a file of one's own, with the check turned off, reads
    assert open_split(tmp_path, "valid", verify_checksums=False, progress=False).length == 32


def test_plain_h5_named_like_real_pcam_must_have_its_length(pcam_dir: Path,
                                                            tmp_path: Path) -> None:
    for key in ("x", "y"):
        with h5py.File(tmp_path / pcam_name("test", key), "w") as f:
            f.create_dataset(key, data=_all(pcam_dir / pcam_name("test", key), key))
    with pytest.raises(ChecksumError, match="holds 32 patches, not 32768"):
        open_split(tmp_path, "test", progress=False)


def test_unknown_split_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'validation' is not one of"):
        open_split(tmp_path, "validation")
    with pytest.raises(DataError, match="nowhere"):
        open_split(tmp_path / "nowhere", "train")


_SLOW_DECOMPRESSION = """
import sys, time
import pcamflow.data._gzip as gz

class Slow(gz.tqdm):  # every block of the file takes a while: time to be killed
    def update(self, n=1):
        time.sleep(0.05)
        return super().update(n)

gz.tqdm = Slow
gz._BLOCK = 1 << 14
gz.decompress(sys.argv[1], progress=False)
"""


def test_a_killed_decompression_leaves_a_partial_file_the_next_run_replaces(
        tmp_path: Path) -> None:
    payload = np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8).tobytes()
    gz = tmp_path / pcam_name("train", "x", gz=True)
    gz.write_bytes(gzip.compress(payload, compresslevel=1))
    partial = tmp_path / f".{pcam_name('train', 'x')}.partial"
    child = subprocess.Popen([sys.executable, "-c", _SLOW_DECOMPRESSION, str(gz)])
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 0):
        assert child.poll() is None, "the decompression ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert 0 < partial.stat().st_size < len(payload)  # the name is fixed: the next run sees it
    assert not (tmp_path / pcam_name("train", "x")).exists()

    out, sha = decompress(gz, progress=False)
    assert out.read_bytes() == payload and sha == hashlib.sha256(gz.read_bytes()).hexdigest()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted([gz.name, out.name, f".{out.name}.source.json"])
