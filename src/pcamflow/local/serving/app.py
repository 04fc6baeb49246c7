"""The local endpoint: SageMaker's inference contract over HTTP, with FastAPI and uvicorn.

Routes:

- ``GET /ping``: 200 once the model is loaded (the inference-container health check; the only
  route open without the API key).
- ``POST /invocations``: the inference-container contract.
- ``POST /endpoints/{name}/invocations``: the SageMaker runtime API, so that
  ``boto3.client("sagemaker-runtime", endpoint_url=URL).invoke_endpoint(...)`` works unchanged.
  It answers with the runtime API's headers (``Content-Type``,
  ``x-Amzn-Invoked-Production-Variant``, ``X-Amzn-SageMaker-Custom-Attributes`` echoed back).
- ``GET /``: a web page to try a patch in a browser; ``GET /info``: the model's description.

A body is one image (``image/jpeg``, ``image/png``, ``application/x-image``; JPEG or PNG under
any of the three), answered with a JSON list of class probabilities, or with one JSON Lines
record ``{"prediction": [...]}`` for ``Accept: application/jsonlines``; or a batch
(``application/x-npy``) answered with a list of lists, or one record per image. Errors come in
the runtime API's format, an ``x-amzn-ErrorType`` header and a ``{"message": ...}`` body:
``ValidationError`` (400) for a body that is empty, undecodable, too large an image or too
small, or of an unsupported type, and with status 413 for a body over the size limit or 408 for
one too slow to arrive; ``ModelError`` (424) when inference fails; ``AccessDeniedException``
(401) for a missing or wrong API key, and (403) for a request naming another host to a
loopback server; ``ServiceUnavailable`` (503) when connections run out; ``InternalFailure``
(500) for anything unexpected.

Work is bounded per request: the body's size and the time it takes to arrive, the images in a
batch and the pixels decoded in all. Bodies are decoded in a small pool of threads, never on
the event loop, so ``/ping`` answers while a large image decodes; each image is cut down to
what the model's preprocessing keeps of it as soon as it is decoded, so what waits for the
model is small. A request whose client goes away is dropped before its next forward pass.

The API key, when set, is accepted as an ``X-Api-Key`` header, ``Authorization: Bearer KEY``, or
HTTP Basic authentication with the key as password (what a browser asks for on the web page).
Request bodies are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pcamflow.config import DeploySettings
from pcamflow.errors import ImageError, ModelError
from pcamflow.local.model.preprocess import pil_to_tensor
from pcamflow.local.serving.batching import MicroBatcher
from pcamflow.local.serving.guards import ApiError, HostGuard, api_key_check, read_body
from pcamflow.local.serving.payloads import answer_type, decode_body, encode_answer

__all__ = [
    "DECODE_THREADS",
    "DEFAULT_MAX_BODY_BYTES",
    "ApiError",
    "create_app",
    "fit_to_model",
    "make_predictor",
]

log = logging.getLogger("pcamflow.server")

_DEFAULTS = DeploySettings()

DEFAULT_MAX_BODY_BYTES = _DEFAULTS.max_body_bytes
"""SageMaker real-time endpoints take at most 6 MB per request; so does this one by default."""

DECODE_THREADS = 2
"""Threads decoding request bodies: enough to keep the model fed, few enough that decoding
bounds its own memory (each holds at most one request's pixels)."""

PRODUCTION_VARIANT = "AllTraffic"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
_STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_HEADERS = {
    # the page loads nothing from elsewhere: it works offline and cannot be made to leak
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; connect-src 'self' data: blob:; "
        "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def make_predictor(model: Any) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A function from uint8 (H, W, 3) arrays to probabilities, for :class:`MicroBatcher`.

    Images of one size are stacked and run in one forward pass; the model's own
    ``preprocess`` resizes and normalises them.

    Raises (from the returned function):
        ModelError: the model failed or gave probabilities that are not finite.
    """

    grey = model.meta.image_shape[0] == 1

    def predict(images: list[np.ndarray]) -> np.ndarray:
        if grey:  # ITU-R 601 luma, as Pillow's convert("L") computes it
            weights = np.array([0.299, 0.587, 0.114])
            images = [np.rint(image @ weights).astype(np.uint8)[..., None] for image in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.shape, []).append(index)
        out: np.ndarray | None = None
        try:
            for indices in groups.values():
                batch = model.preprocess(np.stack([images[i] for i in indices]))
                probabilities = np.asarray(model.predict_proba(batch), dtype=np.float64)
                if out is None:
                    out = np.empty((len(images), probabilities.shape[1]))
                out[indices] = probabilities
        except ModelError:
            raise
        except Exception as error:
            raise ModelError(f"inference failed: {type(error).__name__}: {error}") from error
        assert out is not None
        if not np.all(np.isfinite(out)):
            raise ModelError("inference failed: the model returned non-finite probabilities")
        return out

    return predict


def fit_to_model(meta: Any) -> Callable[[np.ndarray], np.ndarray]:
    """A function that cuts a decoded uint8 (H, W, 3) image down to what ``meta``'s
    preprocessing keeps of it: the shorter side resized to ``meta.resize``, or else the
    centre crop of the model's input size.

    The model's ``preprocess`` gives the same pixels for the result as for the whole image (it
    resizes with the same function, and a crop of the crop is the crop), so this changes no
    answer; it only frees a large image's memory at once, and moves its resizing off the
    thread that runs the model.
    """
    channels, height, width = meta.image_shape
    resize = meta.resize

    def fit(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if resize:
            if channels != 3 or min(h, w) == resize:
                return image  # grey models resize after the luma conversion: leave it to them
            tensor = pil_to_tensor(Image.fromarray(np.ascontiguousarray(image)), 3, resize)
            return np.ascontiguousarray(tensor.permute(1, 2, 0).numpy())
        if h < height or w < width:
            return image
        top, left = (h - height) // 2, (w - width) // 2
        return np.ascontiguousarray(image[top : top + height, left : left + width])

    return fit


def _static(name: str) -> bytes:
    return (resources.files("pcamflow.local.serving") / "static" / name).read_bytes()


async def _client_gone(request: Request) -> None:
    """Returns once the client has disconnected (call it after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(
    model: Any,
    *,
    name: str,
    api_key: str | None = None,
    max_batch_size: int = _DEFAULTS.max_batch_size,
    max_wait_ms: float = _DEFAULTS.max_wait_ms,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = _DEFAULTS.max_pixels,
    max_images: int = _DEFAULTS.max_images,
    read_timeout_s: float = _DEFAULTS.read_timeout_s,
) -> FastAPI:
    """The endpoint's FastAPI application.

    Args:
        model: a :class:`~pcamflow.local.model.archive.LoadedModel`.
        name: the endpoint's name (``/endpoints/{name}/invocations`` answers only to it).
        api_key: when set, every route but ``/ping`` requires it.
        max_batch_size: the most images in one forward pass.
        max_wait_ms: how long a batch waits for requests already on their way.
        max_body_bytes: the largest request body accepted (413 beyond).
        max_image_pixels: the most pixels decoded for one request (width x height, summed
            over a batch's images).
        max_images: the most images in one batch-form request.
        read_timeout_s: seconds a request's body has to arrive (408 beyond).
    """
    batcher = MicroBatcher(
        make_predictor(model), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms
    )
    decoder = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="pcamflow-decode")
    _, height, width = model.meta.image_shape
    fit = fit_to_model(model.meta)

    def prepare(body: bytes, content_type: str | None) -> tuple[list[np.ndarray], bool]:
        images, batch = decode_body(
            body, content_type, max_pixels=max_image_pixels, max_images=max_images,
            min_size=(height, width),
        )
        return [fit(image) for image in images], batch

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.aclose()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title=f"pcamflow endpoint {name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(HostGuard)
    app.state.batcher = batcher
    app.state.decoder = decoder
    app.state.model = model
    app.state.endpoint_name = name
    page = _static("index.html")
    assets = {file: _static(file) for file in _STATIC_FILES}

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        if error.status == 401 and request.url.path in ("/", "/static/app.js", "/static/style.css"):
            # a browser then asks for the key (as the password) and sends it on every request
            return error.response({"WWW-Authenticate": 'Basic realm="pcamflow endpoint"'})
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "UnknownOperationException" if error.status_code in (404, 405) else "HttpError"
        return ApiError(error.status_code, kind, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("unexpected error: %s: %s", type(error).__name__, error)
        return ApiError(500, "InternalFailure", "the endpoint failed unexpectedly").response()

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    router = APIRouter(dependencies=[Depends(api_key_check(api_key))])

    async def invoke(request: Request) -> Response:
        try:
            kind = answer_type(request.headers.get("accept"))
        except ImageError as error:
            raise ApiError(400, "ValidationError", str(error)) from None
        try:
            body = await read_body(request, max_body_bytes, read_timeout_s)
        except ClientDisconnect:
            return Response(status_code=204)  # nobody to answer
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            with batcher.expect() as ticket:
                decoding = asyncio.get_running_loop().run_in_executor(
                    decoder, prepare, body, request.headers.get("content-type")
                )
                del body  # the decoder's copy is the last: freed once it is done
                try:
                    images, batch = await decoding
                except ImageError as error:
                    raise ApiError(400, "ValidationError", str(error)) from None
                if gone.done():
                    return Response(status_code=204)
                work = asyncio.ensure_future(batcher.submit(images, ticket))
                del images
                await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not work.done():  # the client went away: the batcher drops what is left of it
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            return Response(status_code=204)
        try:
            probabilities = work.result()
        except ModelError as error:
            log.error("inference failed for a request: %s", error)
            raise ApiError(424, "ModelError", str(error)) from None
        headers = {
            "x-Amzn-Invoked-Production-Variant": PRODUCTION_VARIANT,
            "x-amzn-RequestId": uuid.uuid4().hex,
        }
        custom = request.headers.get(CUSTOM_ATTRIBUTES)
        if custom is not None:
            headers[CUSTOM_ATTRIBUTES] = custom
        return Response(
            encode_answer(probabilities, kind, batch), media_type=kind, headers=headers
        )

    @router.post("/invocations")
    async def invocations(request: Request) -> Response:
        return await invoke(request)

    @router.post("/endpoints/{endpoint}/invocations")
    async def runtime_invocations(endpoint: str, request: Request) -> Response:
        if endpoint != name:
            raise ApiError(400, "ValidationError", f"Endpoint {endpoint} not found.")
        return await invoke(request)

    @router.get("/info")
    async def info() -> dict[str, Any]:
        meta = model.meta
        stats = batcher.stats
        return {
            "name": name,
            "architecture": meta.architecture,
            "num_layers": meta.num_layers,
            "classes": list(meta.classes),
            "image_shape": list(meta.image_shape),
            "resize": meta.resize,
            "max_batch_size": max_batch_size,
            "max_body_bytes": max_body_bytes,
            "max_images": max_images,
            "max_pixels": max_image_pixels,
            "batches": {
                "count": stats.batches,
                "images": stats.images,
                "largest": stats.largest,
                "mean": round(stats.mean_batch, 3),
                "abandoned": stats.abandoned,
                "dropped": stats.dropped,
            },
        }

    @router.get("/")
    async def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/static/{file}")
    async def static(file: str) -> Response:
        if file not in assets:
            raise ApiError(404, "UnknownOperationException", f"no file {file!r}")
        return Response(assets[file], media_type=_STATIC_FILES[file], headers=_PAGE_HEADERS)

    app.include_router(router)
    return app
