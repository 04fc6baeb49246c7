"""Reading PCam's HDF5 files: find, decompress, verify, check, and stream in chunks.

A split is two files, ``camelyonpatch_level_2_split_<split>_x.h5`` and ``..._y.h5``, each
possibly gzipped (``.h5.gz``, as Zenodo serves them). :func:`open_split` finds them, turns a
``.gz`` into an ``.h5`` once (:func:`decompress`, beside the source or in a cache folder, and
reused afterwards), checks files named like the real PCam against the published checksums,
and checks the schema before anything else is done:

- ``x``: (N, 96, 96, 3) uint8;
- ``y``: (N, 1, 1, 1) or (N,), any integer dtype, values in {0, 1};
- the same N > 0 in both.

:func:`check_split` makes the part of these checks that costs no more than opening the files
(names, sizes, shapes, counts), for ``pcamflow validate``. :class:`PcamReader` then yields
the split in chunks aligned to the file's own HDF5 chunking, so that any chunk layout or
compression works and a split is never read whole into memory.

Checksums: the original PCam README swapped the MD5 sums of the valid and test ``x`` files;
pcamflow uses the sizes and SHA-256 sums of the ``.h5.gz`` files from tensorflow_datasets'
checksum list for ``patch_camelyon`` instead. A ``.gz`` is hashed while it is decompressed. A
plain ``.h5`` named like PCam has no published checksum; it must hold the real split's number
of patches. Synthetic files (attribute ``pcamflow_synthetic``) are not checked.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np

from pcamflow.data._files import SPLITS, pcam_name
from pcamflow.data._gzip import decompress, decompressed, gz_identity, sidecar
from pcamflow.data.synth import SYNTHETIC_ATTR, is_synthetic
from pcamflow.errors import ChecksumError, DataError, SchemaError

__all__ = [
    "PCAM_LENGTHS",
    "PUBLISHED_CHECKSUMS",
    "PcamReader",
    "PcamSplit",
    "check_schema",
    "check_split",
    "decompress",
    "open_split",
]

PUBLISHED_CHECKSUMS: dict[str, tuple[int, str]] = {
    pcam_name("train", "x", gz=True): (
        6421353462, "d619e741468a7ab35c7e4a75e6821b7e7e6c9411705d45708f2a0efc8960656c"),
    pcam_name("train", "y", gz=True): (
        21378, "b74126d2c01b20d3661f9b46765d29cf4e4fba6faba29c8e0d09d406331ab75a"),
    pcam_name("valid", "x", gz=True): (
        805965320, "f82ee1670d027b4ec388048d9eabc2186b77c009655dae76d624c0ecb053ccb2"),
    pcam_name("valid", "y", gz=True): (
        3038, "ce1ae30f08feb468447971cfd0472e7becd0ad96d877c64120c72571439ae48c"),
    pcam_name("test", "x", gz=True): (
        800875929, "79174c2201ad521602a5888be8f36ee10875f37403dd3f2086caf2182ef87245"),
    pcam_name("test", "y", gz=True): (
        3040, "0a522005fccc8bbd04c5a117bfaf81d8da2676f03a29d7499f71d0a0bd6068ef"),
}
"""``.h5.gz`` file name -> (size in bytes, SHA-256) of the real PCam files on Zenodo."""

PCAM_LENGTHS = {"train": 262144, "valid": 32768, "test": 32768}
"""Patches per split in the real PCam."""

PATCH_SHAPE = (96, 96, 3)


@attrs.frozen
class PcamSplit:
    """One split's files, checked and ready to read.

    Attributes:
        split: ``train``, ``valid`` or ``test``.
        x_path: the ``x`` HDF5 file (decompressed if the source was gzipped).
        y_path: the ``y`` HDF5 file.
        length: patches in the split.
        synthetic: whether the files are synthetic PCam.
    """

    split: str
    x_path: Path
    y_path: Path
    length: int
    synthetic: bool = False


def _find(source: Path, split: str, key: str) -> Path:
    plain = source / pcam_name(split, key)
    gz = source / pcam_name(split, key, gz=True)
    if plain.exists() and not _is_our_decompression(plain, gz):
        return plain  # a user-decompressed file, or no .gz beside it
    if gz.exists():
        return gz
    if plain.exists():
        return plain
    raise DataError(f"{split}: missing file {plain} (or {gz.name}) in {source}")


def _is_our_decompression(plain: Path, gz: Path) -> bool:
    return gz.exists() and sidecar(plain).exists()


def _open_h5(path: Path, **kwargs: Any) -> h5py.File:
    try:
        return h5py.File(path, "r", **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error})") from None


def check_schema(split: str, x_path: Path, y_path: Path) -> tuple[int, bool]:
    """Check PCam's keys, shapes, dtypes and labels; return (length, synthetic).

    Raises:
        SchemaError: naming the file, the key and what was found.
    """
    with _open_h5(x_path) as fx, _open_h5(y_path) as fy:
        length = _check_layout(split, x_path, y_path, fx, fy)
        labels = _read_labels(fy["y"])
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if len(bad):
            raise SchemaError(
                f"{y_path}: 'y'[{bad[0]}] is {labels[bad[0]]}, expected 0 or 1 "
                f"({len(bad)} bad labels)"
            )
        return length, _marked(fx, fy)


def _marked(fx: h5py.File, fy: h5py.File) -> bool:
    return bool(fx.attrs.get(SYNTHETIC_ATTR, 0)) and bool(fy.attrs.get(SYNTHETIC_ATTR, 0))


def _check_layout(split: str, x_path: Path, y_path: Path, fx: h5py.File, fy: h5py.File) -> int:
    """Keys, shapes, dtypes and lengths (no data read); return the length."""
    if "x" not in fx:
        raise SchemaError(f"{x_path}: no key 'x' (keys: {sorted(fx.keys())})")
    if "y" not in fy:
        raise SchemaError(f"{y_path}: no key 'y' (keys: {sorted(fy.keys())})")
    x, y = fx["x"], fy["y"]
    if not isinstance(x, h5py.Dataset) or not isinstance(y, h5py.Dataset):
        raise SchemaError(f"{x_path}: 'x' and {y_path}: 'y' must be datasets, not groups")
    if x.ndim != 4 or x.shape[1:] != PATCH_SHAPE:
        raise SchemaError(f"{x_path}: 'x' has shape {x.shape}, expected (N, 96, 96, 3)")
    if x.dtype != np.uint8:
        raise SchemaError(f"{x_path}: 'x' has dtype {x.dtype}, expected uint8")
    if y.ndim not in (1, 4) or y.shape[1:] not in ((), (1, 1, 1)):
        raise SchemaError(f"{y_path}: 'y' has shape {y.shape}, expected (N, 1, 1, 1) or (N,)")
    if not np.issubdtype(y.dtype, np.integer):
        raise SchemaError(f"{y_path}: 'y' has dtype {y.dtype}, expected an integer type")
    if x.shape[0] != y.shape[0]:
        raise SchemaError(
            f"{split}: {x_path.name} holds {x.shape[0]} patches but {y_path.name} "
            f"holds {y.shape[0]} labels"
        )
    if x.shape[0] == 0:
        raise SchemaError(f"{x_path}: split {split!r} is empty (0 patches)")
    return int(x.shape[0])


def _read_labels(y: h5py.Dataset) -> np.ndarray:
    """All labels as int64 (N,): labels are small (8 bytes each at most), unlike patches."""
    return np.asarray(y[...]).reshape(-1).astype(np.int64)


def _verify(split: str, files: dict[str, tuple[Path, str | None]], length: int | None) -> None:
    """Check files named like real PCam against the published sizes, checksums and counts.

    A SHA-256 of None is not checked (it is known only once a ``.gz`` has been decompressed);
    a length of None is not checked either.
    """
    for key, (source, sha) in files.items():
        published = PUBLISHED_CHECKSUMS.get(source.name)
        if published is not None:
            size = source.stat().st_size
            if size != published[0] or (sha is not None and sha != published[1]):
                found = f"size {size}" + (f", SHA-256 {sha}" if sha else "")
                raise ChecksumError(
                    f"{source}: does not match the published PCam checksum (expected size "
                    f"{published[0]}, SHA-256 {published[1]}; found {found}); download it "
                    "again, or set data.verify_checksums = false for a file of your own"
                )
        elif (length is not None and source.name == pcam_name(split, key)
              and length != PCAM_LENGTHS[split]):
            raise ChecksumError(
                f"{source}: named like PCam's {split} split but holds {length} patches, not "
                f"{PCAM_LENGTHS[split]}; set data.verify_checksums = false for a file of your own"
            )


def check_split(source: str | Path, split: str, *, cache_dir: str | Path | None = None,
                verify_checksums: bool = True, missing_ok: bool = False) -> None:
    """The checks of :func:`open_split` that cost no more than opening the files.

    Names, existence, gzip signatures, the published sizes of ``.h5.gz`` files, and of each
    HDF5 file at hand (plain, or a ``.gz``'s decompressed copy): keys, shapes, dtypes, the
    patch count against the published one. Nothing is decompressed or hashed, and no
    patch or label is read, so this is quick on the 7 GB train split too.

    Args:
        missing_ok: a missing file is no error (it is to be downloaded).

    Raises:
        DataError, SchemaError, ChecksumError: as :func:`open_split` would.
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    source = Path(source)
    if not source.is_dir():
        if missing_ok:
            return
        raise DataError(f"{source}: PCam source folder not found")
    files: dict[str, tuple[Path, str | None]] = {}
    h5: dict[str, Path] = {}
    for key in ("x", "y"):
        try:
            found = _find(source, split, key)
        except DataError:
            if missing_ok:
                continue
            raise
        files[key] = (found, None)
        if found.suffix != ".gz":
            h5[key] = found
            continue
        with open(found, "rb") as head:
            if head.read(2) != b"\x1f\x8b":
                raise DataError(f"{found}: not a gzip file")
        copy = Path(cache_dir or source) / found.name[: -len(".gz")]
        if decompressed(copy, gz_identity(found)) is not None:
            h5[key] = copy
    synthetic = all(is_synthetic(path) for path, _ in files.values()) and bool(files)
    length = None
    if len(h5) == 2:
        with _open_h5(h5["x"]) as fx, _open_h5(h5["y"]) as fy:
            length = _check_layout(split, h5["x"], h5["y"], fx, fy)
            synthetic = _marked(fx, fy)
    if verify_checksums and not synthetic:
        _verify(split, files, length)


def open_split(source: str | Path, split: str, *, cache_dir: str | Path | None = None,
               verify_checksums: bool = True, progress: bool = True) -> PcamSplit:
    """Find, decompress, verify and check one split of PCam in ``source``.

    Raises:
        DataError: a file is missing, not gzip/HDF5, or truncated.
        SchemaError: keys, shapes, dtypes, lengths or labels are wrong.
        ChecksumError: a file named like real PCam does not match its published checksum.
    """
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source}: PCam source folder not found")
    files: dict[str, tuple[Path, str | None]] = {}
    paths: dict[str, Path] = {}
    for key in ("x", "y"):
        found = _find(source, split, key)
        if found.suffix == ".gz":
            paths[key], sha = decompress(found, cache_dir, progress=progress)
            files[key] = (found, sha)
        else:
            paths[key] = found
            files[key] = (found, None)
    length, synthetic = check_schema(split, paths["x"], paths["y"])
    if verify_checksums and not synthetic:
        _verify(split, files, length)
    return PcamSplit(split=split, x_path=paths["x"], y_path=paths["y"], length=length,
                     synthetic=synthetic)


class PcamReader:
    """Reads a checked split in chunks; use as a context manager.

    Each process opens its own reader (HDF5 handles are not shared across processes).
    Reads are aligned to the dataset's HDF5 chunks and the chunk cache holds one row of
    chunks, so compressed files are decompressed once per chunk.
    """

    def __init__(self, split: PcamSplit, *, chunk: int = 1024) -> None:
        self.split = split
        with _open_h5(split.x_path) as probe:
            layout = probe["x"].chunks
        rows = layout[0] if layout else 1
        self.chunk = max(rows, (chunk // rows) * rows)
        cache = int(np.prod(layout)) * 2 if layout else 1 << 20
        self._fx = _open_h5(split.x_path, rdcc_nbytes=max(cache, 1 << 20))
        self._fy = _open_h5(split.y_path)
        self.x: h5py.Dataset = self._fx["x"]
        self.y: h5py.Dataset = self._fy["y"]

    def __len__(self) -> int:
        return self.split.length

    def labels(self) -> np.ndarray:
        """All labels, (N,) uint8."""
        return _read_labels(self.y).astype(np.uint8)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Patches ``start:stop`` as (n, 96, 96, 3) uint8."""
        return np.asarray(self.x[start:stop])

    def chunks(self, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(first index, patches, labels)`` over ``start:stop`` in aligned chunks."""
        stop = len(self) if stop is None else min(stop, len(self))
        pos = start
        while pos < stop:
            end = min(stop, (pos // self.chunk + 1) * self.chunk)
            labels = np.asarray(self.y[pos:end]).reshape(-1).astype(np.uint8)
            yield pos, self.read(pos, end), labels
            pos = end

    def fingerprint(self, samples: int = 64) -> str:
        """A digest of the split's content that costs a few reads, not a pass over it.

        It covers the length, every label and ``samples`` patches spread evenly over the
        split (its first and last among them): another dataset, another seed of synthetic
        PCam or another split differs in it.
        """
        n = len(self)
        digest = hashlib.sha256(str(n).encode())
        digest.update(self.labels().tobytes())
        for i in np.unique(np.linspace(0, n - 1, min(n, samples)).astype(np.int64)).tolist():
            digest.update(self.read(i, i + 1).tobytes())
        return digest.hexdigest()[:16]

    def close(self) -> None:
        """Close the HDF5 files."""
        self._fx.close()
        self._fy.close()

    def __enter__(self) -> PcamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
