"""PCam HDF5 -> a tree of JPEG images, in parallel, resumable, never half-written.

:func:`convert_pcam` writes ``<dst>/<split>/<label>/<split>_<index:06d>.jpg`` for every patch
of the chosen splits. Every split is checked (files, checksums, schema) before the first image
is written. The work is cut into ranges of patches handed to one worker process per core; each
worker opens the HDF5 files itself and reads its range in chunks. Each JPEG is written to a
temporary name and renamed, so an image either exists complete or not at all: a run killed at
any moment loses nothing, and a re-run converts only what is missing. :class:`LocalConverter`
is the pipeline stage around it.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pcamflow._io import PARTIAL_SUFFIX, write_bytes_atomic
from pcamflow.artifacts import ImageDataset
from pcamflow.data._files import SPLITS, pcam_name
from pcamflow.data.pcam import PcamReader, PcamSplit, open_split
from pcamflow.errors import DataError, StageError
from pcamflow.stages import Context, DataConverter

__all__ = ["LABELS", "LocalConverter", "convert_pcam", "encode_jpeg"]

LABELS = ("0", "1")


def image_name(split: str, index: int) -> str:
    """The file name of patch ``index`` of ``split``."""
    return f"{split}_{index:06d}.jpg"


def encode_jpeg(patch: np.ndarray, quality: int = 95) -> bytes:
    """One (96, 96, 3) uint8 patch as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(patch, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _convert_range(task: tuple[PcamSplit, str, int, int, bytes, int]) -> int:
    """Worker: convert patches ``start:stop`` whose ``todo`` flag is set; return how many."""
    split, dst, start, stop, todo, quality = task
    name = split.split
    # plain strings in the per-image loop: pathlib costs more than the file write here
    folders = [os.path.join(dst, name, label) for label in LABELS]
    flags = np.frombuffer(todo, dtype=np.uint8)
    done = 0
    with PcamReader(split) as reader:
        for first, patches, labels in reader.chunks(start, stop):
            for offset in np.flatnonzero(flags[first - start: first - start + len(patches)]):
                index = first + int(offset)
                path = f"{folders[labels[offset]]}/{name}_{index:06d}.jpg"
                write_bytes_atomic(path, encode_jpeg(patches[offset], quality))
                done += 1
    return done


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent handles it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _existing(folder: Path, split: str) -> tuple[np.ndarray, list[str]]:
    """Indices of complete images in ``folder``, and leftover temporary files."""
    head = f"{split}_"
    indices, partial = [], []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return np.zeros(0, dtype=np.int64), []
    for name in names:
        if name.endswith(PARTIAL_SUFFIX):
            partial.append(name)
        elif name.startswith(head) and name.endswith(".jpg") and name[len(head):-4].isdigit():
            indices.append(int(name[len(head):-4]))
    return np.array(indices, dtype=np.int64), partial


def _prepare_output(dst: Path, splits: Sequence[str]) -> None:
    """Make the label folders and prove they are writable, before any work."""
    try:
        for split in splits:
            for label in LABELS:
                (dst / split / label).mkdir(parents=True, exist_ok=True)
        probe = dst / f".write-test-{os.getpid()}{PARTIAL_SUFFIX}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        where = error.filename or dst
        raise DataError(
            f"{where}: output folder is not writable ({error.strerror or error})"
        ) from None


def _todo(split: PcamSplit, labels: np.ndarray, dst: Path) -> np.ndarray:
    """Per patch: 1 if its JPEG is still to be written. Removes stale and temporary files."""
    todo = np.ones(split.length, dtype=np.uint8)
    for position, label in enumerate(LABELS):
        folder = dst / split.split / label
        found, partial = _existing(folder, split.split)
        for name in partial:  # left by a killed run; never a complete image
            (folder / name).unlink(missing_ok=True)
        valid = found < split.length
        stale = found[~valid]
        good = found[valid]
        wrong = good[labels[good] != position]  # an image of another dataset's labels
        for index in np.concatenate([stale, wrong]).tolist():
            (folder / image_name(split.split, index)).unlink(missing_ok=True)
        todo[good[labels[good] == position]] = 0
    return todo


def convert_pcam(
    source: str | Path,
    dst: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    quality: int = 95,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    verify_checksums: bool = True,
    task_size: int | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Convert PCam's HDF5 files in ``source`` to a JPEG tree in ``dst``.

    Args:
        source: folder with the PCam files (``.h5`` or ``.h5.gz``).
        dst: the image tree's root.
        splits: the splits to convert.
        quality: JPEG quality, 1..100.
        workers: worker processes (None: one per core).
        cache_dir: where ``.h5.gz`` files are decompressed (None: beside them).
        verify_checksums: check files named like real PCam against the published checksums.
        task_size: patches per unit of work handed to a worker (None: about 16 units per
            worker, 256 to 4096 patches each, so that workers finish together).
        progress: show a progress bar.

    Returns:
        The :class:`ImageDataset`, with counts per split and class.

    Raises:
        DataError: a file is missing or malformed (checked for all splits before any work),
            or ``dst`` is not writable.
    """
    if not 1 <= quality <= 100:
        raise DataError(f"convert.quality: {quality} is outside 1..100")
    dst = Path(dst)
    opened = [
        open_split(source, split, cache_dir=cache_dir, verify_checksums=verify_checksums,
                   progress=progress)
        for split in splits
    ]
    _prepare_output(dst, splits)
    root = str(dst.resolve())
    workers = max(1, workers or os.cpu_count() or 1)
    if task_size is None:
        total_patches = sum(split.length for split in opened)
        task_size = int(np.clip(total_patches // (workers * 16), 256, 4096))
    tasks, counts = [], {}
    for split in opened:
        with PcamReader(split) as reader:
            labels = reader.labels()
        counts[split.split] = {label: int((labels == int(label)).sum()) for label in LABELS}
        todo = _todo(split, labels, dst)
        for start in range(0, split.length, task_size):
            flags = todo[start:start + task_size]
            if flags.any():
                tasks.append((split, root, start, start + len(flags), flags.tobytes(), quality))
    total = sum(np.frombuffer(t[4], dtype=np.uint8).sum() for t in tasks)
    workers = max(1, min(workers, len(tasks)))
    bar = tqdm(total=int(total), unit="img", desc="converting", disable=None if progress else True)
    try:
        if workers == 1:
            for task in tasks:
                bar.update(_convert_range(task))
        elif tasks:
            # fork: quick to start and works from any main module (scripts, notebooks,
            # stdin); no HDF5 file is open in this process at this point
            methods = multiprocessing.get_all_start_methods()
            context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
            with context.Pool(workers, initializer=_ignore_sigint) as pool:
                for done in pool.imap_unordered(_convert_range, tasks):
                    bar.update(done)
    finally:
        bar.close()
    for split in opened:
        for label in LABELS:
            found, _ = _existing(dst / split.split / label, split.split)
            if len(found) != counts[split.split][label]:
                raise StageError(
                    f"{dst / split.split / label}: {counts[split.split][label]} images expected, "
                    f"{len(found)} found after conversion"
                )
    return ImageDataset(root=root, counts=counts)


class LocalConverter(DataConverter):
    """Converts PCam's HDF5 files to a local JPEG tree.

    Reads ``[data]`` (source, splits, cache_dir, verify_checksums) and ``[convert]``
    (quality, workers, output; the output defaults to ``<stage folder>/images``).
    """

    def validate(self, context: Context) -> None:
        data = context.settings.data
        source = Path(data.source)
        if not source.is_dir():
            raise DataError(f"data.source: {source} is not a folder")
        for split in data.splits:
            for key in ("x", "y"):
                plain = source / pcam_name(split, key)
                if not plain.exists() and not plain.with_name(plain.name + ".gz").exists():
                    raise DataError(f"data.source: {source} has no {plain.name} (or .gz)")

    def run(self, context: Context) -> ImageDataset:
        data, settings = context.settings.data, context.settings.convert
        output = Path(settings.output) if settings.output else context.stage_dir / "images"
        return convert_pcam(
            data.source,
            output,
            splits=data.splits,
            quality=settings.quality,
            workers=settings.workers,
            cache_dir=data.cache_dir,
            verify_checksums=data.verify_checksums,
        )
