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

A body is one image (``image/jpeg``, ``image/png``, ``application/x-image``), answered with a
JSON list of class probabilities, or a batch (``application/x-npy``) answered with a list of
lists. Errors come in the runtime API's format, an ``x-amzn-ErrorType`` header and a
``{"message": ...}`` body: ``ValidationError`` (400) for a body that is empty, undecodable or
of an unsupported type, ``ValidationError`` with status 413 for a body over the size limit,
``ModelError`` (424) when inference fails, ``AccessDeniedException`` (401) for a missing or
wrong API key.

The API key, when set, is accepted as an ``X-Api-Key`` header, ``Authorization: Bearer KEY``, or
HTTP Basic authentication with the key as password (what a browser asks for on the web page).
Request bodies are never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pcamflow.config import DeploySettings
from pcamflow.errors import ImageError, ModelError
from pcamflow.local.serving.batching import MicroBatcher
from pcamflow.local.serving.payloads import MAX_IMAGE_PIXELS, decode_body

__all__ = ["DEFAULT_MAX_BODY_BYTES", "ApiError", "create_app", "make_predictor"]

log = logging.getLogger("pcamflow.server")

DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
"""SageMaker real-time endpoints take at most 6 MB per request; so does this one."""

PRODUCTION_VARIANT = "AllTraffic"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
_INLINE_DECODE_BYTES = 64 * 1024  # larger bodies are decoded in a thread, off the event loop
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


class ApiError(Exception):
    """An error answered in the SageMaker runtime API's format.

    Attributes:
        status: the HTTP status.
        error_type: the ``x-amzn-ErrorType`` header (botocore's error code).
        message: the ``message`` of the JSON body.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The JSON response for this error."""
        return JSONResponse(
            {"message": self.message},
            status_code=self.status,
            headers={"x-amzn-ErrorType": self.error_type, **(headers or {})},
        )


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


def _api_key_check(api_key: str | None) -> Callable[[Request], None]:
    expected = api_key.encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = _given_key(request)
        if given is None:
            raise ApiError(
                401,
                "AccessDeniedException",
                "this endpoint needs an API key: send it as the X-Api-Key header "
                "(or Authorization: Bearer KEY)",
            )
        if not hmac.compare_digest(given.encode(), expected):
            raise ApiError(401, "AccessDeniedException", "the API key is wrong")

    return check


def _given_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key is not None:
        return key
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):
            return base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
    return None  # another scheme (botocore's SigV4 signature) carries no key


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = ApiError(
        413,
        "ValidationError",
        f"the request body is over the {limit:,}-byte limit of this endpoint",
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before reading a byte
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:  # a chunked body without a length
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


_DEFAULTS = DeploySettings()


def _static(name: str) -> bytes:
    return (resources.files("pcamflow.local.serving") / "static" / name).read_bytes()


def create_app(
    model: Any,
    *,
    name: str,
    api_key: str | None = None,
    max_batch_size: int = _DEFAULTS.max_batch_size,
    max_wait_ms: float = _DEFAULTS.max_wait_ms,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
) -> FastAPI:
    """The endpoint's FastAPI application.

    Args:
        model: a :class:`~pcamflow.local.model.archive.LoadedModel`.
        name: the endpoint's name (``/endpoints/{name}/invocations`` answers only to it).
        api_key: when set, every route but ``/ping`` requires it.
        max_batch_size: the most images in one forward pass.
        max_wait_ms: how long a batch waits for requests already on their way.
        max_body_bytes: the largest request body accepted (413 beyond).
        max_image_pixels: the largest image (width x height) decoded.
    """
    batcher = MicroBatcher(
        make_predictor(model), max_batch_size=max_batch_size, max_wait_ms=max_wait_ms
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await batcher.aclose()

    app = FastAPI(
        title=f"pcamflow endpoint {name}",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.batcher = batcher
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

    @app.get("/ping")
    async def ping() -> Response:
        return Response(status_code=200)

    router = APIRouter(dependencies=[Depends(_api_key_check(api_key))])

    async def invoke(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if accept and not any(
            kind.split(";")[0].strip() in ("application/json", "*/*", "application/*")
            for kind in accept.split(",")
        ):
            raise ApiError(400, "ValidationError", f"Accept {accept!r}: only application/json")
        with batcher.expect() as ticket:
            body = await _read_body(request, max_body_bytes)
            content_type = request.headers.get("content-type")
            try:
                if len(body) <= _INLINE_DECODE_BYTES:
                    images, batch = decode_body(body, content_type, max_pixels=max_image_pixels)
                else:
                    images, batch = await run_in_threadpool(
                        decode_body, body, content_type, max_pixels=max_image_pixels
                    )
            except ImageError as error:
                raise ApiError(400, "ValidationError", str(error)) from None
            try:
                probabilities = await batcher.submit(images, ticket)
            except ModelError as error:
                log.error("inference failed for a request: %s", error)
                raise ApiError(424, "ModelError", str(error)) from None
        answer = probabilities.tolist() if batch else probabilities[0].tolist()
        headers = {
            "x-Amzn-Invoked-Production-Variant": PRODUCTION_VARIANT,
            "x-amzn-RequestId": uuid.uuid4().hex,
        }
        custom = request.headers.get(CUSTOM_ATTRIBUTES)
        if custom is not None:
            headers[CUSTOM_ATTRIBUTES] = custom
        return Response(json.dumps(answer), media_type="application/json", headers=headers)

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
            "batches": {
                "count": stats.batches,
                "images": stats.images,
                "largest": stats.largest,
                "mean": round(stats.mean_batch, 3),
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
