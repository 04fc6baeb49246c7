"""Bad input, each kind on its own: a clear runtime-API error, and the server stays up."""

from __future__ import annotations

import base64
import io
import struct
import subprocess
import sys
import warnings
import zlib

import httpx
import numpy as np
import pytest
from _endpoint import decoded, encode, make_archive, npy, patch
from PIL import Image

from pcamflow.config import DeploySettings
from pcamflow.errors import ModelError
from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.app import create_app
from pcamflow.local.serving.hosting import ServerThread, serve_model

KEY = "s3cret-key-for-tests"
JPEG = {"Content-Type": "image/jpeg"}
NPY = {"Content-Type": "application/x-npy"}
PNG = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model_archive(make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz"))


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(create_app(model, name="bad-input")) as running:
        yield running


@pytest.fixture
def client(server):
    """A client of the shared server; after each test, the server still answers well."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
        assert http.get("/ping").status_code == 200
        good = http.post("/invocations", content=encode(patch()), headers=JPEG)
        assert good.status_code == 200 and len(good.json()) == 2


def refused(reply: httpx.Response, status: int, error_type: str) -> str:
    """Check a runtime-API error; returns its message."""
    assert reply.status_code == status, reply.text
    assert reply.headers["x-amzn-errortype"] == error_type
    message = reply.json()["message"]
    assert isinstance(message, str) and message
    return message


def test_empty_body(client) -> None:
    reply = client.post("/invocations", content=b"", headers=JPEG)
    assert "empty" in refused(reply, 400, "ValidationError")


def test_truncated_jpeg(client) -> None:
    body = encode(patch())
    reply = client.post("/invocations", content=body[: len(body) // 2], headers=JPEG)
    assert "cannot be decoded" in refused(reply, 400, "ValidationError")


def test_not_an_image_at_all(client) -> None:
    reply = client.post("/invocations", content=b"GIF89a not really", headers=PNG)
    refused(reply, 400, "ValidationError")


def test_png_with_an_alpha_channel_is_composited_over_white(model, client) -> None:
    rgb = patch(3)
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    opaque = encode(np.concatenate([rgb, alpha], axis=2), "PNG")
    plain = encode(rgb, "PNG")
    headers = {"Content-Type": "image/png"}
    assert client.post("/invocations", content=opaque, headers=headers).json() == pytest.approx(
        client.post("/invocations", content=plain, headers=headers).json()
    )
    alpha[:48] = 0  # the top half fully transparent: it shows as white
    seethrough = client.post(
        "/invocations", content=encode(np.concatenate([rgb, alpha], axis=2), "PNG"), headers=headers
    )
    assert seethrough.status_code == 200
    over_white = rgb.copy()
    over_white[:48] = 255
    want = model.predict_images(over_white[None])[0]
    np.testing.assert_allclose(seethrough.json(), want, rtol=1e-5, atol=1e-6)


def _png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side black pixels: ~100 kB that decode to side² bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row * 500) for _ in range(side // 500)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def test_decompression_bomb_is_refused_before_decoding(client) -> None:
    bomb = _png_bomb(10_000)
    assert len(bomb) < 1_000_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        assert Image.open(io.BytesIO(bomb)).size == (10_000, 10_000)  # a real image
    reply = client.post("/invocations", content=bomb, headers=PNG)
    assert "10000x10000" in refused(reply, 400, "ValidationError")


def test_npy_claiming_a_huge_shape_is_refused(client) -> None:
    body = npy(np.zeros((1, 4, 4, 3), np.uint8)).replace(b"(1, 4, 4, 3)", b"(1, 99999, 99999, 3)")
    reply = client.post("/invocations", content=body, headers=NPY)
    refused(reply, 400, "ValidationError")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 8, 8), np.uint8),
        np.zeros((1, 8, 8, 3), np.float32),
        np.array(["a"], dtype=object),
    ],
    ids=["no-channels", "float", "pickled-object"],
)
def test_npy_that_is_not_uint8_images_is_refused(client, array) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    reply = client.post("/invocations", content=buffer.getvalue(), headers=NPY)
    refused(reply, 400, "ValidationError")


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", None])
def test_wrong_or_missing_content_type(client, content_type) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = client.post("/invocations", content=encode(patch()), headers=headers)
    assert "not supported" in refused(reply, 400, "ValidationError")


def test_body_over_6_mb(client) -> None:
    big = b"\xff\xd8\xff" + bytes(6 * 1024 * 1024)
    reply = client.post("/invocations", content=big, headers=JPEG)
    assert "limit" in refused(reply, 413, "ValidationError")


def test_chunked_body_over_6_mb(client) -> None:
    def chunks():
        for _ in range(7):
            yield bytes(1024 * 1024)

    reply = client.post("/invocations", content=chunks(), headers=JPEG)
    refused(reply, 413, "ValidationError")


def test_inference_failure_is_a_model_error(model) -> None:
    class Failing:
        meta = model.meta
        preprocess = staticmethod(model.preprocess)
        fail = True

        def predict_proba(self, batch):
            if Failing.fail:
                raise RuntimeError("out of cheese")
            return model.predict_proba(batch)

    server = ServerThread(create_app(Failing(), name="failing"))
    with server, httpx.Client(base_url=server.url, timeout=30) as http:
        body = encode(patch())
        reply = http.post("/invocations", content=body, headers=JPEG)
        assert "out of cheese" in refused(reply, 424, "ModelError")
        Failing.fail = False
        again = http.post("/invocations", content=body, headers=JPEG)
        assert again.status_code == 200
        want = model.predict_images(decoded(body)[None])[0]
        np.testing.assert_allclose(again.json(), want, rtol=1e-5)


# --- the API key -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(model):
    with ServerThread(create_app(model, name="keyed", api_key=KEY)) as running:
        yield running


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Api-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": KEY[:-1]}],
    ids=["missing", "wrong", "wrong-bearer", "prefix"],
)
def test_missing_or_wrong_api_key_is_refused(keyed, headers) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for method, path in [("POST", "/invocations"), ("POST", "/endpoints/keyed/invocations"),
                             ("GET", "/info"), ("GET", "/")]:
            reply = http.request(method, path, content=encode(patch()),
                                 headers={"Content-Type": "image/jpeg", **headers})
            refused(reply, 401, "AccessDeniedException")
        assert http.get("/ping").status_code == 200  # the health check stays open


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Api-Key": KEY},
        {"Authorization": f"Bearer {KEY}"},
        {"Authorization": "Basic " + base64.b64encode(f"anyone:{KEY}".encode()).decode()},
    ],
    ids=["header", "bearer", "basic"],
)
def test_the_right_api_key_is_accepted(keyed, headers) -> None:
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        reply = http.post("/invocations", content=encode(patch()),
                          headers={"Content-Type": "image/jpeg", **headers})
        assert reply.status_code == 200 and len(reply.json()) == 2
        assert http.get("/", headers=headers).status_code == 200


def test_the_page_asks_a_browser_for_the_key(keyed) -> None:
    reply = httpx.get(f"{keyed.url}/")
    assert reply.status_code == 401
    assert reply.headers["www-authenticate"].startswith("Basic")


# --- the model file ----------------------------------------------------------------------------


def test_an_invalid_archive_is_a_clear_error_at_startup(tmp_path) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"this is not a gzip file")
    result = subprocess.run(
        [sys.executable, "-m", "pcamflow.cli", "serve", str(bad), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("pcamflow: error: ")
    assert str(bad) in result.stderr and "model.tar.gz" in result.stderr
    assert "Traceback" not in result.stderr


def test_archives_without_a_model_are_refused(tmp_path) -> None:
    import tarfile

    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ModelError, match="not a pcamflow model archive"):
        serve_model(empty, DeploySettings(port=0))
    with pytest.raises(ModelError, match="not found"):
        serve_model(tmp_path / "missing.tar.gz", DeploySettings(port=0))


@pytest.mark.parametrize(
    ("meta_change", "named"),
    [(None, "expected a JSON object"), ({"std": [float("nan")] * 3}, "std"),
     ({"resize": -5}, "resize")],
    ids=["not-an-object", "std-nan", "negative-resize"],
)
def test_bad_model_metadata_stops_serve_with_one_line(tmp_path, meta_change, named) -> None:
    """Such a model once loaded, and then every request failed with 424 (or an AttributeError)."""
    import json
    import tarfile

    good = make_archive(tmp_path / "good.tar.gz")
    bad = tmp_path / "model.tar.gz"
    with tarfile.open(good) as src, tarfile.open(bad, "w:gz") as dst:
        meta = json.loads(src.extractfile("model.json").read())
        bad_meta = ["not", "an", "object"] if meta_change is None else {**meta, **meta_change}
        text = json.dumps(bad_meta)
        for name, data in (("model.safetensors", src.extractfile("model.safetensors").read()),
                           ("model.json", text.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    result = subprocess.run(
        [sys.executable, "-m", "pcamflow.cli", "serve", str(bad), "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"pcamflow: error: {bad}: model.json: ") and named in lines[0]
