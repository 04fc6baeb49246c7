"""Helpers of the endpoint tests: a real (small, untrained) model archive and test images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pcamflow.local.model.archive import ModelMeta, save_model_archive
from pcamflow.local.model.resnet import architecture_name, build_model


def make_archive(path: Path, num_layers: int = 20, seed: int = 0, channels: int = 3) -> Path:
    """A ``model.tar.gz`` holding an untrained ResNet, written by ``save_model_archive``
    (``channels=1``: a greyscale model)."""
    torch.manual_seed(seed)
    module = build_model(num_layers, num_classes=2, channels=channels)
    meta = ModelMeta(
        architecture=architecture_name(num_layers),
        num_layers=num_layers,
        num_classes=2,
        image_shape=(channels, 96, 96),
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        hyperparameters={"num_layers": str(num_layers),
                         "image_shape": f"{channels},96,96"},
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


def refused(reply, status: int, error_type: str) -> str:
    """Check an answer in the runtime API's error format; returns its message."""
    assert reply.status_code == status, reply.text
    assert reply.headers["x-amzn-errortype"] == error_type
    message = reply.json()["message"]
    assert isinstance(message, str) and message
    return message


class GatedModel:
    """A real model whose forward passes wait for ``gate``; records each pass's images.

    ``passes`` holds, per forward pass, the first pixel value of each image in it, so a test
    can tell requests apart by the colour of their images.
    """

    def __init__(self, model) -> None:
        import threading

        self.model = model
        self.meta = model.meta
        self.gate = threading.Event()
        self.passes: list[list[int]] = []

    def preprocess(self, images):
        self.passes.append([int(image[0, 0, 0]) for image in images])
        return self.model.preprocess(images)

    def predict_proba(self, batch):
        assert self.gate.wait(60), "the test never opened the gate"
        return self.model.predict_proba(batch)


def flat(value: int, size: int = 96) -> np.ndarray:
    """An image of one colour (value, value, value), uint8 (size, size, 3)."""
    return np.full((size, size, 3), value, np.uint8)


def wait_for(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until true; fail the test after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def raw_exchange(url: str, data: bytes, timeout: float = 30.0) -> bytes:
    """Send ``data`` on a fresh TCP connection and read until the server closes it."""
    import socket
    from urllib.parse import urlparse

    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def parse_raw(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """The status, headers (lower-case names) and body of a raw HTTP/1.1 answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
