"""Helpers of the endpoint tests: a real (small, untrained) model archive and test images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcamflow.local.model.archive import ModelMeta, save_model_archive
from pcamflow.local.model.resnet import architecture_name, build_model


def make_archive(path: Path, num_layers: int = 20, seed: int = 0) -> Path:
    """A ``model.tar.gz`` holding an untrained ResNet, written by ``save_model_archive``."""
    torch.manual_seed(seed)
    module = build_model(num_layers, num_classes=2)
    meta = ModelMeta(
        architecture=architecture_name(num_layers),
        num_layers=num_layers,
        num_classes=2,
        hyperparameters={"num_layers": str(num_layers)},
    )
    return save_model_archive(path, module, meta)


def patch(seed: int = 0, size: int = 96) -> np.ndarray:
    """A smooth pink-purple patch (H&E-like colours), uint8 (size, size, 3)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.array([200.0, 120.0, 180.0]) + rng.normal(0, 20, 3)
    wave = 40 * np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(1, 3)))
    image = base[None, None, :] + wave[..., None] * np.array([0.6, 1.0, 0.4])
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    """``array`` as image file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    """``array`` as ``.npy`` bytes."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """What a JPEG/PNG decodes to, as the server sees it (RGB uint8)."""
    return np.array(Image.open(io.BytesIO(data)).convert("RGB"))
