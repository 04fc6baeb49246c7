"""Augmented manifests and ``.lst`` files for an image tree, and the one manifest reader.

For each split of an :class:`~pcamflow.artifacts.ImageDataset` the builder writes, into its
stage folder:

- ``<split>.manifest``: JSON Lines, ``{"source-ref": "file:///abs/path.jpg", "class": "1"}``,
  the augmented manifest format SageMaker's Pipe mode reads (image first, then the label);
- ``<split>.lst``: ``index<TAB>label<TAB>relative/path.jpg``, the File-mode list, with paths
  relative to the image root and the patch's index in its split as the index.

Lines are shuffled deterministically by the pipeline's seed, an optional per-class cap keeps
quick runs small, and every listed image is checked to exist and be non-empty.
:func:`read_manifest` is the reader every other part uses.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from tqdm.auto import tqdm

from pcamflow._io import atomic_write, digest
from pcamflow.artifacts import ImageDataset, Manifests
from pcamflow.data._files import SPLITS
from pcamflow.errors import DataError, ImageError
from pcamflow.stages import Context, ManifestBuilder

__all__ = [
    "LocalManifestBuilder",
    "build_manifests",
    "read_manifest",
    "uri_to_path",
]

def uri_to_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (a plain path is returned as a path).

    Raises:
        DataError: the URI has another scheme (``s3://`` has no local path).
    """
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"{uri}: file URIs on another host ({parsed.netloc}) are not supported")
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    raise DataError(f"{uri}: not a local file (scheme {parsed.scheme!r}); expected file://")


def read_manifest(path: str | Path) -> list[tuple[str, int]]:
    """Read an augmented manifest: ``(source-ref, label)`` per line, in file order.

    Raises:
        DataError: the file is missing, or a line is not a JSON object with a string
            ``source-ref`` and an integer ``class`` (the message names the file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read manifest ({error})") from None
    entries: list[tuple[str, int]] = []
    loads = json.loads
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = loads(line)
            ref, label = record["source-ref"], record["class"]
            if not isinstance(ref, str) or isinstance(label, bool):
                raise TypeError
            entries.append((ref, int(label)))
        except (ValueError, KeyError, TypeError):
            shown = line if len(line) <= 120 else line[:117] + "..."
            raise DataError(
                f"{path}:{number}: expected {{\"source-ref\": \"<uri>\", \"class\": \"<label>\"}}"
                f", got {shown!r}"
            ) from None
    return entries


def _scan(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    """Index digits and patch indices of the images ``<split>_<index>.jpg`` in ``folder``.

    Temporary files of an interrupted conversion (``.<name>.partial``) and stray files are
    left out. One regular-expression pass over the whole listing keeps this fast.
    """
    try:
        listing = "\n".join(os.listdir(folder))
    except FileNotFoundError:
        return [], np.zeros(0, dtype=np.int64)
    digits = re.findall(rf"^{re.escape(split)}_(\d+)\.jpg$", listing, flags=re.MULTILINE)
    index = np.array(digits).astype(np.int64) if digits else np.zeros(0, dtype=np.int64)
    return digits, index


def build_manifests(
    dataset: ImageDataset,
    out_dir: str | Path,
    *,
    seed: int = 0,
    shuffle: bool = True,
    max_per_class: int | None = None,
    check_images: bool = True,
    progress: bool = True,
) -> Manifests:
    """Write ``<split>.manifest`` and ``<split>.lst`` for each split of ``dataset``.

    Args:
        dataset: the image tree (its ``local_root`` or ``root`` must be a local folder).
        out_dir: where the files go.
        seed: the shuffle's seed.
        shuffle: shuffle lines (deterministic by ``seed`` and split).
        max_per_class: keep at most this many images per class and split.
        check_images: check that each split and class has exactly the images
            ``dataset.counts`` says (the converter writes images atomically, so a listed image
            is a complete one).
        progress: show a progress bar.

    Raises:
        ImageError: an image the dataset counts is missing.
        DataError: the image root is not a local folder.
    """
    root = Path(dataset.local_root or dataset.root)
    if "://" in str(dataset.local_root or dataset.root) or not root.is_dir():
        raise DataError(f"{root}: image root is not a local folder")
    root = root.resolve()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # escape the root once; the rest of each path is plain ASCII made by the converter
    prefix = json.dumps(root.as_uri())[1:-1]
    splits = [s for s in SPLITS if s in dataset.counts] + [
        s for s in dataset.counts if s not in SPLITS
    ]
    manifests, lsts, counts = {}, {}, {}
    for split_index, split in enumerate(
        tqdm(splits, desc="manifests", unit="split", disable=None if progress else True)
    ):
        labels = sorted(dataset.counts[split])
        names: list[str] = []
        indices, label_of = [], []
        for position, label in enumerate(labels):
            found, index = _scan(root / split / label, split)
            expected = dataset.counts[split][label]
            if check_images and len(found) != expected:
                raise ImageError(
                    f"{root / split / label}: {expected} images expected (dataset counts), "
                    f"{len(found)} found"
                )
            if max_per_class is not None and len(found) > max_per_class:
                keep = np.argsort(index, kind="stable")
                if shuffle:  # a random subset, the same for the same seed
                    rng = np.random.default_rng([seed, split_index, position, 0xCA9])
                    keep = keep[rng.choice(len(keep), max_per_class, replace=False)]
                keep = np.sort(keep[:max_per_class])
                found = [found[i] for i in keep.tolist()]
                index = index[keep]
            names.extend(found)
            indices.append(index)
            label_of.append(np.full(len(found), position, dtype=np.int64))
        all_index = np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64)
        order = np.argsort(all_index, kind="stable")
        if shuffle:
            order = order[np.random.default_rng([seed, split_index]).permutation(len(order))]
        order_list = order.tolist()
        label_list = np.concatenate(label_of)[order].tolist() if label_of else []
        index_list = all_index[order].tolist()
        # each line is a three-part concatenation: this is what keeps 327,680 lines fast
        heads = [f'{{"source-ref": "{prefix}/{split}/{label}/{split}_' for label in labels]
        tails = [f'.jpg", "class": "{label}"}}\n' for label in labels]
        manifest_path = out / f"{split}.manifest"
        lst_path = out / f"{split}.lst"
        with atomic_write(manifest_path, encoding="utf-8") as f:
            f.write("".join([heads[p] + names[j] + tails[p]
                             for j, p in zip(order_list, label_list, strict=True)]))
        lst_mid = [f"\t{label}\t{split}/{label}/{split}_" for label in labels]
        with atomic_write(lst_path, encoding="utf-8") as f:
            f.write("".join([f"{i}{lst_mid[p]}{names[j]}.jpg\n"
                             for i, j, p in zip(index_list, order_list, label_list, strict=True)]))
        manifests[split] = str(manifest_path.resolve())
        lsts[split] = str(lst_path.resolve())
        counts[split] = len(order_list)
    return Manifests(manifests=manifests, lst=lsts, counts=counts, image_root=str(root))


class LocalManifestBuilder(ManifestBuilder):
    """Builds manifests and ``.lst`` files for a local image tree, in the stage folder.

    Reads ``[manifests]`` (shuffle, max_per_class, check_images) and the pipeline's seed.
    """

    # reads images on this machine, or the local copy an S3 image tree keeps (local_root)
    writes_to = "local"

    def validate(self, context: Context) -> None:
        dataset = context.optional_input(ImageDataset)
        if dataset is not None and "://" in dataset.root and not dataset.local_root:
            raise DataError(
                f"manifest_builder = 'local' needs a local image tree; {dataset.root} is remote"
            )

    def fingerprint(self, context: Context) -> str:
        """The base fingerprint plus the pipeline seed, which orders and subsets the lines."""
        base = super().fingerprint(context)
        seed = context.settings.pipeline.seed
        return digest({"base": base, "seed": seed})

    def run(self, context: Context) -> Manifests:
        settings = context.settings.manifests
        return build_manifests(
            context.input(ImageDataset),
            context.stage_dir,
            seed=context.settings.pipeline.seed,
            shuffle=settings.shuffle,
            max_per_class=settings.max_per_class,
            check_images=settings.check_images,
        )
