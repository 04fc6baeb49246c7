"""Predicting image files with a loaded model: decoding overlapped with the forward passes.

JPEG decoding runs in a background thread one batch ahead of the network (Pillow releases
the GIL while it decodes), so the evaluation runs close to the speed of a bare forward loop.
With ``tta`` each batch is also scored over its 8 dihedral views; the first view is the
image itself, so the plain prediction costs nothing extra.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pcamflow.errors import ImageError
from pcamflow.local.model.archive import LoadedModel
from pcamflow.local.model.preprocess import dihedral_views

__all__ = ["load_batch", "predict_files"]


def load_batch(paths: Sequence[Path], channels: int = 3) -> np.ndarray:
    """Decode image files into one uint8 array ``(N, H, W, C)``.

    Raises:
        ImageError: a file is missing, unreadable, or of another size than the first.
    """
    mode = "RGB" if channels == 3 else "L"
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert(mode), dtype=np.uint8)
        except FileNotFoundError:
            raise ImageError(f"{path}: image not found (named in the manifest)") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            raise ImageError(f"{path}: not a readable image ({error})") from None
        if arrays and array.shape[:2] != arrays[0].shape[:2]:
            raise ImageError(
                f"{path}: {array.shape[1]}x{array.shape[0]} pixels, but {paths[0]} has "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; a split's images must share a size"
            )
        arrays.append(array)
    stacked = np.stack(arrays)
    return stacked[..., None] if stacked.ndim == 3 else stacked


def _batches(
    paths: Sequence[Path], batch_size: int, channels: int
) -> Iterator[np.ndarray]:
    """Decoded batches, the next one decoding in a thread while the caller uses this one."""
    starts = range(0, len(paths), batch_size)
    with ThreadPoolExecutor(1, thread_name_prefix="pcamflow-decode") as pool:
        pending: Future[np.ndarray] | None = None
        for start in starts:
            chunk = paths[start : start + batch_size]
            if pending is None:
                pending = pool.submit(load_batch, chunk, channels)
            current = pending.result()
            following = start + batch_size
            pending = (
                pool.submit(load_batch, paths[following : following + batch_size], channels)
                if following < len(paths) else None
            )
            yield current


def predict_files(
    model: LoadedModel,
    paths: Sequence[Path],
    *,
    positive: int = 1,
    batch_size: int = 128,
    tta: bool = False,
    progress: bool = True,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities of class ``positive`` for each image file.

    Args:
        model: the loaded model.
        paths: image files.
        positive: the output index of the positive class.
        batch_size: images per forward pass.
        tta: also return the mean probability over the 8 dihedral views.
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        ``(scores, tta_scores)``; ``tta_scores`` is None without ``tta``.
    """
    from tqdm.auto import tqdm

    channels = model.meta.image_shape[0]
    scores: list[np.ndarray] = []
    tta_scores: list[np.ndarray] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress else True)
    with torch.inference_mode():
        for array in _batches(list(paths), batch_size, channels):
            batch = model.preprocess(array)
            if not tta:
                scores.append(model.predict_proba(batch)[:, positive])
            else:
                views = [model.predict_proba(v)[:, positive] for v in dihedral_views(batch)]
                scores.append(views[0])
                tta_scores.append(np.mean(views, axis=0))
            bar.update(len(array))
    bar.close()
    plain = np.concatenate(scores) if scores else np.zeros(0)
    return plain, (np.concatenate(tta_scores) if tta else None)
