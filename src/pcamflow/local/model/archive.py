"""The local model archive: ``model.tar.gz`` with safetensors weights and JSON metadata.

The archive holds ``model.safetensors`` (the state dict) and ``model.json`` (a
:class:`ModelMeta`), and possibly periodic checkpoints under ``checkpoints/`` (as the
algorithm's ``checkpoint_frequency`` keeps them). Nothing in it is pickled, and loading reads
only those members, so an archive from elsewhere cannot run code.

>>> meta = ModelMeta(architecture="resnet20", num_layers=20, num_classes=2)
>>> meta.classes
('0', '1')
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from pcamflow._io import atomic_path
from pcamflow.errors import ModelError
from pcamflow.local.model.preprocess import center_crop, dihedral_views, pil_to_tensor
from pcamflow.local.model.resnet import build_model

__all__ = ["LoadedModel", "ModelMeta", "load_model_archive", "save_model_archive"]

WEIGHTS_NAME = "model.safetensors"
META_NAME = "model.json"
FORMAT_VERSION = 1
_MAX_MEMBER_BYTES = 2 * 1024**3  # the largest ResNet-200 is ~260 MB; refuse anything absurd
_PREDICT_CHUNK = 256


def _floats(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _ints(values: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in values)


@attrs.frozen(kw_only=True)
class ModelMeta:
    """What a model needs besides its weights: architecture, classes and preprocessing.

    Attributes:
        architecture: e.g. ``resnet20``.
        num_layers: the ResNet depth.
        num_classes: outputs of the classifier.
        classes: class names, in output order.
        image_shape: the network's input ``(channels, height, width)``.
        resize: images are resized so the shorter side is this, then centre-cropped to
            ``image_shape`` (None: no resizing).
        mean: per-channel mean on the 0..1 scale, subtracted before the network.
        std: per-channel standard deviation on the 0..1 scale, divided by.
        hyperparameters: the algorithm's hyperparameters, as strings.
        extensions: the local extensions the model was trained with.
        format_version: the archive format.
    """

    architecture: str
    num_layers: int
    num_classes: int
    classes: tuple[str, ...] = attrs.field(default=("0", "1"), converter=tuple)
    image_shape: tuple[int, int, int] = attrs.field(default=(3, 96, 96), converter=_ints)
    resize: int | None = None
    mean: tuple[float, ...] = attrs.field(default=(0.5, 0.5, 0.5), converter=_floats)
    std: tuple[float, ...] = attrs.field(default=(0.25, 0.25, 0.25), converter=_floats)
    hyperparameters: dict[str, str] = attrs.field(factory=dict)
    extensions: dict[str, Any] = attrs.field(factory=dict)
    format_version: int = FORMAT_VERSION

    def __attrs_post_init__(self) -> None:
        # a model that loads must also predict: every request to a server with a bad value
        # here would fail (424), so a bad value is refused when the model is loaded
        for name in ("num_layers", "num_classes", "format_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"{name}: {value!r} is not a positive integer")
        if self.format_version > FORMAT_VERSION:
            raise ModelError(
                f"format_version: {self.format_version} is newer than this pcamflow reads "
                f"({FORMAT_VERSION}); upgrade pcamflow"
            )
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ModelError(f"architecture: {self.architecture!r} is not a name")
        if len(self.image_shape) != 3 or self.image_shape[0] not in (1, 3) or min(
            self.image_shape
        ) < 1:
            raise ModelError(
                f"image_shape: {self.image_shape!r} is not (channels 1 or 3, height, width)"
            )
        channels, height, width = self.image_shape
        if self.resize is not None and (
            not isinstance(self.resize, int) or isinstance(self.resize, bool)
            or self.resize < max(height, width)
        ):
            raise ModelError(
                f"resize: {self.resize!r} must be null or an integer of at least the image "
                f"height and width ({max(height, width)}); images are resized, then cropped"
            )
        if len(self.mean) != channels or len(self.std) != channels:
            raise ModelError(f"mean/std: need {channels} values each (one per channel)")
        if not all(math.isfinite(m) for m in self.mean):
            raise ModelError(f"mean: {self.mean!r} must be finite numbers")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ModelError(f"std: {self.std!r} must be finite positive numbers")
        if len(self.classes) != self.num_classes:
            raise ModelError(
                f"classes: {len(self.classes)} names for num_classes={self.num_classes}"
            )
        if not all(isinstance(name, str) for name in self.classes):
            raise ModelError(f"classes: {list(self.classes)!r} must be strings")
        for name in ("hyperparameters", "extensions"):
            if not isinstance(getattr(self, name), dict):
                raise ModelError(f"{name}: {getattr(self, name)!r} is not an object")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = attrs.asdict(self)
        for key in ("classes", "image_shape", "mean", "std"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelMeta:
        """Rebuild from :meth:`to_dict`'s output (unknown keys are ignored).

        Raises:
            ModelError: ``data`` is not an object, lacks a required key, or holds a value of
                the wrong type or out of range (the message names the key).
        """
        if not isinstance(data, Mapping):
            raise ModelError(f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in attrs.fields(cls)}
        missing = [
            f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING and f.name not in data
        ]
        if missing:
            raise ModelError(f"missing {', '.join(missing)}")
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as error:  # a converter met a value of the wrong type
            raise ModelError(f"a value has the wrong type ({error})") from None


def _state_bytes(module: torch.nn.Module) -> bytes:
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    return save_safetensors(state)


def save_model_archive(
    path: str | Path,
    module: torch.nn.Module,
    meta: ModelMeta,
    *,
    extra_files: Mapping[str, Path] | None = None,
) -> Path:
    """Write ``module`` and ``meta`` as a ``model.tar.gz`` at ``path``, atomically.

    Args:
        path: the archive to write.
        module: the trained network.
        meta: its metadata.
        extra_files: archive name -> local file, added as they are (e.g. checkpoints).

    Returns:
        The archive's path.
    """
    path = Path(path)
    members = {
        WEIGHTS_NAME: _state_bytes(module),
        META_NAME: json.dumps(meta.to_dict(), indent=2, sort_keys=True).encode(),
    }
    with atomic_path(path) as tmp, tarfile.open(tmp, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, local in (extra_files or {}).items():
            tar.add(str(local), arcname=name, recursive=False)
    return path


def _read_members(path: Path) -> dict[str, bytes]:
    wanted = {WEIGHTS_NAME, META_NAME}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name not in wanted:
                    continue
                if not member.isfile() or member.size > _MAX_MEMBER_BYTES:
                    raise ModelError(f"{path}: {name} is not a regular file of a sane size")
                handle = tar.extractfile(member)
                if handle is None:
                    raise ModelError(f"{path}: cannot read {name}")
                found[name] = handle.read()
    except FileNotFoundError:
        raise ModelError(f"{path}: model archive not found") from None
    except (tarfile.TarError, OSError, EOFError) as error:
        raise ModelError(f"{path}: not a readable model.tar.gz ({error})") from None
    missing = wanted - set(found)
    if missing:
        raise ModelError(
            f"{path}: not a pcamflow model archive (missing {', '.join(sorted(missing))})"
        )
    return found


def load_model_archive(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a ``model.tar.gz`` written by :func:`save_model_archive`.

    Raises:
        ModelError: the file is missing, not an archive, or its weights do not fit its metadata
            (the message names the file).
    """
    path = Path(path)
    members = _read_members(path)
    try:
        meta = ModelMeta.from_dict(json.loads(members[META_NAME]))
    except ValueError as error:  # not JSON at all
        raise ModelError(f"{path}: {META_NAME} is not valid JSON ({error})") from None
    except ModelError as error:
        shown = " ".join(str(error).split())  # one line, whatever the value held
        shown = shown if len(shown) <= 300 else shown[:297] + "..."
        raise ModelError(f"{path}: {META_NAME}: {shown}") from None
    try:
        state = load_safetensors(members[WEIGHTS_NAME])
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ModelError(f"{path}: {WEIGHTS_NAME} is not a safetensors file ({error})") from None
    try:
        module = build_model(meta.num_layers, meta.num_classes, channels=meta.image_shape[0])
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as error:
        raise ModelError(f"{path}: weights do not fit {meta.architecture} ({error})") from None
    device = torch.device(device)
    module.to(device).eval()
    return LoadedModel(module=module, meta=meta, device=device)


@attrs.define
class LoadedModel:
    """A model ready to predict: network (eval mode), metadata and device."""

    module: torch.nn.Module
    meta: ModelMeta
    device: torch.device = attrs.field(factory=lambda: torch.device("cpu"))

    def _to_uint8_batch(self, images: Any) -> torch.Tensor:
        channels, height, width = self.meta.image_shape
        if isinstance(images, np.ndarray):
            if images.ndim == 3 and channels == 1:
                images = images[..., None]
            if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] != channels:
                raise ModelError(
                    f"images: expected a uint8 array (N, H, W, {channels}), got "
                    f"{images.dtype} {images.shape}"
                )
            images = [Image.fromarray(a[..., 0] if channels == 1 else a) for a in images]
        tensors = []
        for index, image in enumerate(images):
            try:
                resize = self.meta.resize
                if not resize and (image.size[0] < width or image.size[1] < height):
                    resize = max(height, width)  # too small: scale up rather than fail
                tensor = pil_to_tensor(image, channels, resize)
            except (AttributeError, OSError, ValueError) as error:
                raise ModelError(f"images[{index}]: not a readable image ({error})") from None
            tensors.append(center_crop(tensor, height, width))
        if not tensors:
            raise ModelError("images: no images given")
        return torch.stack(tensors)

    def preprocess(self, images: Any) -> torch.Tensor:
        """PIL images or a uint8 array ``(N, H, W, C)`` -> the normalised float batch.

        Images are resized (shorter side to ``meta.resize``) and centre-cropped to
        ``meta.image_shape`` exactly as in training, then normalised by ``meta.mean``/``std``.
        """
        batch = self._to_uint8_batch(images)
        mean = torch.tensor(self.meta.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.meta.std).view(1, -1, 1, 1)
        return ((batch.float() / 255.0) - mean) / std

    @torch.no_grad()
    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax probabilities ``(N, num_classes)`` for a preprocessed batch."""
        self.module.eval()
        out = []
        for start in range(0, batch.shape[0], _PREDICT_CHUNK):
            chunk = batch[start : start + _PREDICT_CHUNK].to(self.device)
            logits = self.module(chunk).float()
            if not torch.isfinite(logits).all():
                raise ModelError(f"{self.meta.architecture}: the model produced NaN or inf")
            out.append(torch.softmax(logits, dim=1).cpu())
        return torch.cat(out).numpy().astype(np.float64)

    def predict_images(self, images: Any, tta: bool = False) -> np.ndarray:
        """:meth:`preprocess`, then :meth:`predict_proba` (``tta``: mean over 8 dihedral views)."""
        batch = self.preprocess(images)
        if not tta:
            return self.predict_proba(batch)
        views = dihedral_views(batch)
        return np.mean([self.predict_proba(view) for view in views], axis=0)
