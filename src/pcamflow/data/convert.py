"""PCam HDF5 -> a tree of JPEG images, in parallel, resumable, never half-written.

:func:`convert_pcam` writes ``<dst>/<split>/<label>/<split>_<index:06d>.jpg`` for every patch
of the chosen splits. Every split is checked (files, checksums, schema) before the first image
is written. The work is cut into ranges of patches handed to one worker process per core; each
worker opens the HDF5 files itself and reads its range in chunks. Each JPEG is written to a
temporary name and renamed, so an image either exists complete or not at all: a run killed at
any moment loses nothing, and a re-run converts only what is missing, after checking that each
image it keeps is a whole JPEG (one cut short by other means is made again).

Each split folder records what its images were made from (``<dst>/<split>/.pcamflow-images.json``:
a fingerprint of the source split's content, and the JPEG quality), written before the first
image. A re-run checks it: images of another dataset, or of another quality, are never mixed
with new ones; the run stops with an error naming the change, or, with ``reconvert``, deletes
the split's old images and makes them again. Images in a folder without a record are not
trusted either. :class:`LocalConverter` is the pipeline stage around it.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pcamflow._io import PARTIAL_SUFFIX, atomic_path, write_bytes_atomic
from pcamflow.artifacts import ImageDataset
from pcamflow.data._files import SPLITS, writable_folder
from pcamflow.data.pcam import PcamReader, PcamSplit, check_split, open_split
from pcamflow.errors import DataError, StageError
from pcamflow.stages import Context, DataConverter

__all__ = ["LABELS", "LocalConverter", "convert_pcam", "encode_jpeg"]

LABELS = ("0", "1")
log = logging.getLogger("pcamflow")


def image_name(split: str, index: int) -> str:
    """The file name of patch ``index`` of ``split``."""
    return f"{split}_{index:06d}.jpg"


def encode_jpeg(patch: np.ndarray, quality: int = 95) -> bytes:
    """One (96, 96, 3) uint8 patch as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(patch, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _convert_range(task: tuple[PcamSplit, str, int, int, bytes, int]) -> int:
    """Worker: handle patches ``start:stop`` by their flag; return how many it handled.

    Flag 1: write the JPEG; flag 2: keep the JPEG there if whole, else write it again.
    """
    split, dst, start, stop, todo, quality = task
    name = split.split
    # plain strings in the per-image loop: pathlib costs more than the file write here
    folders = [os.path.join(dst, name, label) for label in LABELS]
    flags = np.frombuffer(todo, dtype=np.uint8)
    done = 0
    with PcamReader(split) as reader:
        for first, patches, labels in reader.chunks(start, stop):
            chunk_flags = flags[first - start: first - start + len(patches)]
            for offset in np.flatnonzero(chunk_flags):
                index = first + int(offset)
                path = f"{folders[labels[offset]]}/{name}_{index:06d}.jpg"
                if chunk_flags[offset] == _CHECK and _whole_jpeg(path):
                    done += 1
                    continue
                write_bytes_atomic(path, encode_jpeg(patches[offset], quality))
                done += 1
    return done


_WRITE, _CHECK = 1, 2


def _whole_jpeg(path: str) -> bool:
    """Whether ``path`` starts with JPEG's start-of-image marker and ends with its end."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(-2, os.SEEK_END)
            return head == b"\xff\xd8" and f.read(2) == b"\xff\xd9"
    except OSError:  # missing, or shorter than 2 bytes
        return False


def _worker_signals() -> None:
    """A pool worker's signals: Ctrl-C reaches the whole process group, and the parent handles
    it and stops the pool; SIGTERM (the pool's terminate) ends the worker, whatever handler it
    inherited from the process it was forked from (an application's own, say)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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
    writable_folder(dst)
    for split in splits:
        for label in LABELS:
            writable_folder(dst / split / label)


def _todo(split: PcamSplit, labels: np.ndarray, dst: Path) -> np.ndarray:
    """Per patch: write its JPEG, or check the one there. Removes stale and temporary files."""
    todo = np.full(split.length, _WRITE, dtype=np.uint8)
    for position, label in enumerate(LABELS):
        folder = dst / split.split / label
        found, partial = _existing(folder, split.split)
        for name in partial:  # left by a killed run; never a complete image
            (folder / name).unlink(missing_ok=True)
        valid = found < split.length
        stale = found[~valid]
        good = found[valid]
        wrong = good[labels[good] != position]  # in the other label's folder
        for index in np.concatenate([stale, wrong]).tolist():
            (folder / image_name(split.split, index)).unlink(missing_ok=True)
        todo[good[labels[good] == position]] = _CHECK
    return todo


# --- what a split's images were made from ---------------------------------------------------

RECORD = ".pcamflow-images.json"
"""The file in each split folder that says what its images were made from."""


def _record_problem(folder: Path, wanted: dict[str, object]) -> str | None:
    """Why the images in ``folder`` cannot be kept for ``wanted``, or None if they can."""
    record = folder / RECORD
    try:
        found = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        count = sum(len(_existing(folder / label, folder.name)[0]) for label in LABELS)
        if count == 0:
            return None
        return f"holds {count} images with no record of what they were made from"
    except (OSError, ValueError) as error:
        return f"its record {record.name} cannot be read ({error})"
    if not isinstance(found, dict):
        return f"its record {record.name} is not a JSON object"
    if found.get("format") != wanted["format"]:
        return (f"its record {record.name} is of format {found.get('format')!r}; this "
                f"version of pcamflow writes and reads format {wanted['format']}")
    if found.get("source") != wanted["source"] or found.get("patches") != wanted["patches"]:
        return (f"its images were made from other data than {wanted['from']} "
                f"({found.get('patches')} patches, fingerprint {found.get('source')}; now "
                f"{wanted['patches']} patches, fingerprint {wanted['source']})")
    if found.get("quality") != wanted["quality"]:
        return (f"its images were made at JPEG quality {found.get('quality')}, "
                f"not {wanted['quality']}")
    return None


def _claim(folder: Path, wanted: dict[str, object]) -> None:
    """Delete the split's images (ours by name only) and record what the new ones are from."""
    for label in LABELS:
        found, partial = _existing(folder / label, folder.name)
        for name in [image_name(folder.name, int(i)) for i in found] + partial:
            (folder / label / name).unlink(missing_ok=True)
    with atomic_path(folder / RECORD) as tmp:
        tmp.write_text(json.dumps(wanted, indent=1), encoding="utf-8")


def convert_pcam(
    source: str | Path,
    dst: str | Path,
    *,
    splits: Sequence[str] = SPLITS,
    quality: int = 95,
    workers: int | None = None,
    cache_dir: str | Path | None = None,
    verify_checksums: bool = True,
    reconvert: bool = False,
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
        reconvert: when a split's images in ``dst`` were made from other data or at another
            quality (or nothing says what from), delete them and convert again (False: raise).
        task_size: patches per unit of work handed to a worker (None: about 16 units per
            worker, 256 to 4096 patches each, so that workers finish together).
        progress: show a progress bar.

    Returns:
        The :class:`ImageDataset`, with counts per split and class.

    Raises:
        DataError: a file is missing or malformed (checked for all splits before any work),
            ``dst`` is not writable, or it holds images made from other data or at another
            quality and ``reconvert`` is False (nothing is written or deleted then).
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
    labels_of, wanted, replace = {}, {}, set()
    for split in opened:  # every split is checked before any image is touched
        with PcamReader(split) as reader:
            labels_of[split.split] = reader.labels()
            fingerprint = reader.fingerprint()
        wanted[split.split] = {"format": 1, "source": fingerprint, "patches": split.length,
                               "quality": quality, "from": str(split.x_path)}
        problem = _record_problem(dst / split.split, wanted[split.split])
        if problem is not None and not reconvert:
            raise DataError(
                f"{dst / split.split}: {problem}; set convert.reconvert = true (pcamflow "
                "convert --reconvert) to make them again, or choose another output folder"
            )
        if problem is not None:
            log.warning("%s: %s; making them again", dst / split.split, problem)
            replace.add(split.split)
    tasks, counts = [], {}
    for split in opened:
        labels = labels_of[split.split]
        if split.split in replace or not (dst / split.split / RECORD).exists():
            _claim(dst / split.split, wanted[split.split])
        counts[split.split] = {label: int((labels == int(label)).sum()) for label in LABELS}
        todo = _todo(split, labels, dst)
        for start in range(0, split.length, task_size):
            flags = todo[start:start + task_size]
            if flags.any():
                tasks.append((split, root, start, start + len(flags), flags.tobytes(), quality))
    total = sum(np.count_nonzero(np.frombuffer(t[4], dtype=np.uint8)) for t in tasks)
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
            with context.Pool(workers, initializer=_worker_signals) as pool:
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

    Reads ``[data]`` (source, splits, cache_dir, verify_checksums, and the download
    settings: with ``download = true`` it fetches the splits' files into the source first)
    and ``[convert]`` (quality, workers, reconvert, output; the output defaults to
    ``<stage folder>/images``).
    """

    writes_to = "local"

    def validate(self, context: Context) -> None:
        """Check the source as far as opening its files allows: names, sizes, shapes, counts.

        With ``data.download`` a missing file is no error (the run fetches it); one already
        there must still be right.
        """
        data = context.settings.data
        source = Path(data.source)
        if not source.is_dir() and not data.download:
            raise DataError(f"data.source: {source} is not a folder (set data.download = true "
                            "to fetch PCam into it)")
        for split in data.splits:
            try:
                check_split(source, split, cache_dir=data.cache_dir,
                            verify_checksums=data.verify_checksums, missing_ok=data.download)
            except DataError as error:
                raise type(error)(f"data.source: {error}") from None

    def run(self, context: Context) -> ImageDataset:
        data, settings = context.settings.data, context.settings.convert
        if data.download:
            from pcamflow.data.download import download_pcam

            download_pcam(data.source, splits=data.splits, meta=False, url=data.download_url,
                          workers=data.download_workers, timeout=data.download_timeout)
        output = Path(settings.output) if settings.output else context.stage_dir / "images"
        return convert_pcam(
            data.source,
            output,
            splits=data.splits,
            quality=settings.quality,
            workers=settings.workers,
            cache_dir=data.cache_dir,
            verify_checksums=data.verify_checksums,
            reconvert=settings.reconvert,
        )
