"""Predicting images with a loaded model, at the speed of the forward pass.

Images come either from a decoded cache (:mod:`pcamflow.local.model.cache`: rows of a
uint8 array, read as a memory map) or from their files, decoded by a pool of threads a few
batches ahead of the network (Pillow releases the GIL while it decodes and resizes). Each
uint8 batch is copied to the device whole (pinned, for a GPU); the centre crop, the
normalisation, the softmax and, with ``tta``, the 8 dihedral views all run there, and the
scores stay there until the last batch, so the device never waits on the host. The pixels are
those :meth:`LoadedModel.preprocess <pcamflow.local.model.archive.LoadedModel.preprocess>`
gives: the same resize and centre crop as in training.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pcamflow.errors import ImageError, ModelError
from pcamflow.local.model.archive import LoadedModel
from pcamflow.local.model.cache import prefetch
from pcamflow.local.model.preprocess import center_crop, dihedral_views, pil_to_tensor

__all__ = ["decode_for", "load_batch", "predict_files"]


def load_batch(paths: Sequence[Path], channels: int = 3) -> np.ndarray:
    """Decode image files as they are into one uint8 array ``(N, H, W, C)``.

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


def decode_for(model: LoadedModel, path: Path) -> np.ndarray:
    """One image file as the model takes it: resized as in training, centre-cropped to its
    input, uint8 ``(H, W, C)``.

    Raises:
        ImageError: the file is missing or unreadable.
    """
    channels, height, width = model.meta.image_shape
    try:
        with Image.open(path) as image:
            resize = model.meta.resize
            if not resize and (image.size[0] < width or image.size[1] < height):
                resize = max(height, width)  # too small: scale up, as preprocess does
            tensor = pil_to_tensor(image, channels, resize)
    except FileNotFoundError:
        raise ImageError(f"{path}: image not found (named in the manifest)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageError(f"{path}: not a readable image ({error})") from None
    return center_crop(tensor, height, width).permute(1, 2, 0).numpy()


def _decoded(model: LoadedModel, paths: Sequence[Path], batch_size: int, workers: int,
             pin: bool) -> Iterator[torch.Tensor]:
    """Batches decoded by ``workers`` threads, in order (pinned for a GPU)."""
    with ThreadPoolExecutor(workers, thread_name_prefix="pcamflow-decode") as pool:
        for start in range(0, len(paths), batch_size):
            rows = list(pool.map(lambda p: decode_for(model, p),
                                 paths[start : start + batch_size]))
            batch = torch.from_numpy(np.stack(rows))
            yield batch.pin_memory() if pin else batch


def _from_array(images: np.ndarray, batch_size: int, pin: bool) -> Iterator[torch.Tensor]:
    """Row slices of a decoded array, copied out of it (into pinned memory for a GPU)."""
    for start in range(0, len(images), batch_size):
        part = images[start : start + batch_size]
        rows = torch.empty(part.shape, dtype=torch.uint8, pin_memory=pin)
        rows.numpy()[...] = part
        yield rows


def predict_files(
    model: LoadedModel,
    paths: Sequence[Path],
    *,
    positive: int = 1,
    batch_size: int = 128,
    tta: bool = False,
    progress: bool = True,
    desc: str = "predict",
    images: np.ndarray | None = None,
    workers: int | None = None,
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
        images: the files already decoded and resized as the model takes them, uint8
            ``(N, H, W, C)`` (a decoded cache); they are centre-cropped here. None: decode
            the files.
        workers: decoding threads (None: one per core).

    Returns:
        ``(scores, tta_scores)``; ``tta_scores`` is None without ``tta``.

    Raises:
        ImageError: a file is missing or unreadable.
        ModelError: the model produced NaN or infinite outputs.
    """
    from tqdm.auto import tqdm

    _, height, width = model.meta.image_shape
    device = model.device
    module = model.module.eval()
    cuda = device.type == "cuda"
    if cuda:  # NHWC convolutions use the tensor cores best
        module.to(memory_format=torch.channels_last)
    std = torch.tensor(model.meta.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    mean = torch.tensor(model.meta.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    threads = workers or os.cpu_count() or 1
    batches = (_from_array(images, batch_size, cuda) if images is not None
               else _decoded(model, list(paths), batch_size, threads, cuda))
    scores: list[torch.Tensor] = []
    tta_scores: list[torch.Tensor] = []
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=None if progress else True)
    with torch.inference_mode():
        for rows in prefetch(batches, depth=3):
            x = rows.to(device, non_blocking=True)
            if x.shape[1:3] != (height, width):
                top, left = (x.shape[1] - height) // 2, (x.shape[2] - width) // 2
                x = x[:, top : top + height, left : left + width]
            x = torch.addcmul(shift, x.permute(0, 3, 1, 2).float(), scale)
            x = x.contiguous(memory_format=torch.channels_last if cuda else torch.contiguous_format)
            views = dihedral_views(x) if tta else [x]
            probs = [torch.softmax(module(v).float(), dim=1)[:, positive] for v in views]
            scores.append(probs[0])
            if tta:
                tta_scores.append(torch.stack(probs).mean(0))
            bar.update(len(rows))
    bar.close()
    plain = torch.cat(scores) if scores else torch.zeros(0, device=device)
    if not bool(torch.isfinite(plain).all()):
        raise ModelError(f"{model.meta.architecture}: the model produced NaN or inf")
    result = plain.double().cpu().numpy()
    return result, (torch.cat(tta_scores).double().cpu().numpy() if tta else None)
