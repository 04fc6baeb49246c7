"""The decoded cache: each split's JPEGs decoded once into one uint8 array on disk.

A split is decoded (and resized, as ``resize`` asks) once into ``<name>-<key>.npy``, an
``(N, H, W, C)`` uint8 array that training and prediction then read as a memory map: a batch
is a slice of rows, so an epoch costs no JPEG decoding and the page cache keeps the array in
memory between epochs. PCam's train split is 7.2 GB decoded. :func:`prefetch` reads batches in
a background thread, ahead of the device.

The key is a digest of the manifest's lines (image paths and labels) and the decoding settings
(channels, ``resize``), so a changed manifest gets a new cache. On reuse a cache is verified:
its header must name the same key and shape, and a sample of its images must have the size and
modification time they had when decoded (up to 1,024 files) and decode to the same pixels (4
files); otherwise it is decoded again. The array is written under a temporary name and renamed,
and the small ``.json`` header is written last, so a killed build never looks complete; a lock
file makes concurrent processes (tuning trials, distributed ranks) decode a split once.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import numpy as np

from pcamflow._io import atomic_path, atomic_write
from pcamflow.errors import ConfigError, ImageError
from pcamflow.local.model.preprocess import decode_image

__all__ = [
    "DataPath",
    "DecodedImages",
    "cache_key",
    "choose_data_path",
    "decoded_size",
    "find_cache",
    "open_cache",
    "prefetch",
]

log = logging.getLogger("pcamflow")
DataPath = Literal["auto", "cache", "stream"]
FORMAT = 1
_CHUNK = 256
_STAT_SAMPLE = 1024
_PIXEL_SAMPLE = 4
Entries = Sequence[tuple[Path, int]]
_T = TypeVar("_T")


class _SizeMismatch(Exception):
    """Images of one split decode to different sizes: they cannot share one array."""


@attrs.frozen(eq=False)
class DecodedImages:
    """An opened cache: the images as a read-only memory map, and their labels.

    Attributes:
        images: ``(N, H, W, C)`` uint8, read-only.
        labels: ``(N,)`` int64.
        path: the ``.npy`` file.
        build_seconds: how long decoding took (None: an existing cache was reused).
    """

    images: np.ndarray
    labels: np.ndarray
    path: Path
    build_seconds: float | None = None

    @property
    def nbytes(self) -> int:
        """The size of the decoded images."""
        return int(self.images.nbytes)


def cache_key(entries: Entries, channels: int, resize: int | None) -> str:
    """The digest naming a split's cache: its manifest lines and how they are decoded."""
    sha = hashlib.sha256(f"pcamflow-cache {FORMAT} {channels} {resize}\n".encode())
    for path, label in entries:
        sha.update(f"{path}\t{label}\n".encode())
    return sha.hexdigest()[:16]


def decoded_size(entries: Entries, channels: int, resize: int | None) -> int:
    """The bytes a split takes decoded, from its first image (every image must match it)."""
    height, width = decode_image(entries[0][0], channels, resize).shape[-2:]
    return len(entries) * height * width * channels


def choose_data_path(
    setting: DataPath, needed: int, folder: Path, *, cached: bool = False
) -> Literal["cache", "stream"]:
    """``cache`` or ``stream`` for ``needed`` decoded bytes under ``folder``.

    ``auto`` caches when the caches exist already, or when they take at most half the free
    disk and fit in the memory available (so epochs read them from the page cache).

    Raises:
        ConfigError: ``cache`` was asked for and the disk cannot hold it.
    """
    if setting == "stream":
        return "stream"
    if cached:
        return "cache"
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if setting == "cache":
        if needed > free:
            raise ConfigError(
                f"train.extensions.data_path: 'cache' needs {needed / 1e9:.1f} GB in {folder}, "
                f"which has {free / 1e9:.1f} GB free; free space, set cache_dir, or use 'stream'"
            )
        return "cache"
    import psutil

    available = psutil.virtual_memory().available
    return "cache" if needed <= free / 2 and needed <= available else "stream"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _decode_rows(entries: Entries, channels: int, resize: int | None) -> Iterator[np.ndarray]:
    for path, _ in entries:
        yield decode_image(path, channels, resize).permute(1, 2, 0).numpy()


def _stats(paths: Sequence[Path]) -> np.ndarray:
    out = np.zeros((len(paths), 2), dtype=np.int64)
    for i, path in enumerate(paths):
        st = os.stat(path)
        out[i] = (st.st_size, st.st_mtime_ns)
    return out


def _sample(n: int, count: int, key: str) -> np.ndarray:
    rng = np.random.default_rng(int(key, 16))
    return np.sort(rng.choice(n, size=min(n, count), replace=False))


def _files(folder: Path, name: str, key: str) -> tuple[Path, Path, Path]:
    stem = folder / f"{name}-{key}"
    return stem.with_suffix(".npy"), stem.with_suffix(".stat.npy"), stem.with_suffix(".json")


def _valid(entries: Entries, channels: int, resize: int | None, key: str,
           folder: Path, name: str) -> np.ndarray | None:
    """The cached images if the cache is there and verifies, else None."""
    data, stat_file, header_file = _files(folder, name, key)
    try:
        header = json.loads(header_file.read_text(encoding="utf-8"))
        if header.get("key") != key or header.get("format") != FORMAT:
            return None
        images = np.load(data, mmap_mode="r")
        stats = np.load(stat_file)
    except (OSError, ValueError):
        return None
    if images.shape != tuple(header["shape"]) or images.shape[0] != len(entries):
        return None
    paths = [entries[i][0] for i in range(len(entries))]
    try:
        picks = _sample(len(entries), _STAT_SAMPLE, key)
        if not np.array_equal(_stats([paths[i] for i in picks]), stats[picks]):
            return None
        for i in _sample(len(entries), _PIXEL_SAMPLE, key[::-1]):
            if not np.array_equal(next(_decode_rows([entries[i]], channels, resize)), images[i]):
                return None
    except (OSError, ImageError):
        return None
    return images


def _fill(array: np.ndarray, entries: Entries, channels: int, resize: int | None,
          start: int) -> int:
    """Decode rows ``start..start+_CHUNK`` into ``array``; return how many."""
    chunk = entries[start : start + _CHUNK]
    for offset, row in enumerate(_decode_rows(chunk, channels, resize)):
        if row.shape != array.shape[1:]:
            first = array.shape[1:]
            raise _SizeMismatch(
                f"{chunk[offset][0]}: decodes to {row.shape[1]}x{row.shape[0]}x{row.shape[2]}, "
                f"but {entries[0][0]} to {first[1]}x{first[0]}x{first[2]}"
            )
        array[start + offset] = row
    return len(chunk)


def _build(entries: Entries, channels: int, resize: int | None, key: str, folder: Path,
           name: str, workers: int, progress: bool) -> float:
    from tqdm.auto import tqdm

    data, stat_file, header_file = _files(folder, name, key)
    first = next(_decode_rows(entries[:1], channels, resize))
    shape = (len(entries), *first.shape)
    began = time.monotonic()
    bar = tqdm(total=len(entries), desc=f"decode {name}", unit="img",
               disable=None if progress else True)

    with atomic_path(data) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        fill = functools.partial(_fill, array, entries, channels, resize)
        pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="pcamflow-decode")
        try:
            for done in pool.map(fill, range(0, len(entries), _CHUNK)):
                bar.update(done)
        finally:  # on an error, drop the chunks not started rather than decode them all
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        array.flush()
        del array
    with atomic_path(stat_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, _stats([path for path, _ in entries]))
    seconds = time.monotonic() - began
    with atomic_write(header_file, encoding="utf-8") as handle:
        json.dump({"format": FORMAT, "key": key, "name": name, "shape": list(shape),
                   "channels": channels, "resize": resize, "first": str(entries[0][0]),
                   "build_seconds": round(seconds, 3)}, handle, indent=1)
    return seconds


def open_cache(
    entries: Entries,
    folder: Path,
    name: str,
    *,
    channels: int,
    resize: int | None,
    workers: int | None = None,
    progress: bool = True,
    required: bool = True,
) -> DecodedImages | None:
    """Open the split's cache in ``folder``, decoding it first if it is missing or stale.

    Args:
        entries: the split's (image path, label) pairs.
        folder: the cache folder.
        name: the split's name (the file's prefix).
        channels: image channels.
        resize: resize the shorter side to this first (None: as they are).
        workers: decoding threads (None: one per core).
        progress: show a progress bar while decoding.
        required: raise if the images differ in size; otherwise return None (stream instead).

    Raises:
        ImageError: an image is missing or unreadable, or (``required``) the images of the
            split differ in size after ``resize``.
    """
    folder = Path(folder)
    key = cache_key(entries, channels, resize)
    data, _, _ = _files(folder, name, key)
    labels = np.asarray([label for _, label in entries], dtype=np.int64)
    with _locked(folder / f"{name}-{key}.lock"):
        images = _valid(entries, channels, resize, key, folder, name)
        if images is not None:
            return DecodedImages(images=images, labels=labels, path=data)
        threads = workers or os.cpu_count() or 1
        try:
            seconds = _build(entries, channels, resize, key, folder, name, threads, progress)
        except _SizeMismatch as error:
            if required:
                raise ImageError(
                    f"{error}; a split's images must share one size (after resize) to be "
                    "cached: set train.extensions.data_path = 'stream' or set resize"
                ) from None
            log.info("cache: %s; streaming the JPEGs instead of caching them", error)
            return None
        log.info("cache: decoded %d %s images into %s (%.1f MB) in %.1f s", len(entries), name,
                 data, data.stat().st_size / 1e6, seconds)
        images = np.load(data, mmap_mode="r")
    return DecodedImages(images=images, labels=labels, path=data, build_seconds=seconds)


def find_cache(entries: Entries, folder: Path, name: str, *, channels: int,
               resize: int | None) -> bool:
    """Whether a complete cache of the split is in ``folder`` (not verified)."""
    _, _, header = _files(Path(folder), name, cache_key(entries, channels, resize))
    return header.is_file()


def prefetch(items: Iterable[_T], depth: int = 3) -> Iterator[_T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead."""
    slots: queue.Queue[tuple[str, object]] = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(("end", None))
        except BaseException as error:  # handed to the consumer, raised there
            slots.put(("error", error))

    thread = threading.Thread(target=produce, name="pcamflow-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = slots.get()
            if kind == "end":
                return
            if kind == "error":
                assert isinstance(value, BaseException)
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
        thread.join()
