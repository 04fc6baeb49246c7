"""What the endpoint checks before any work: the Host header, the API key, the body's size and
pace. Every refusal is an :class:`ApiError`, answered in the SageMaker runtime API's format.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.requests import Request

__all__ = ["ApiError", "HostGuard", "api_key_check", "read_body"]


class ApiError(Exception):
    """An error answered in the SageMaker runtime API's format.

    Attributes:
        status: the HTTP status.
        error_type: the ``x-amzn-ErrorType`` header (botocore's error code).
        message: the ``message`` of the JSON body.
        close: close the connection after the answer (the body was not read to its end, so
            what is left of it must not be taken for the next request).
    """

    def __init__(self, status: int, error_type: str, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.close = close

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The JSON response for this error."""
        extra = {"Connection": "close"} if self.close else {}
        return JSONResponse(
            {"message": self.message},
            status_code=self.status,
            headers={"x-amzn-ErrorType": self.error_type, **extra, **(headers or {})},
        )


def _loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    return host.rstrip(".").lower() == "localhost"


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8080`` -> ``[::1]``)."""
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class HostGuard:
    """ASGI middleware: a server listening on a loopback address answers only requests whose
    ``Host`` is a loopback name (``localhost``, ``127.0.0.1``, ``[::1]``).

    A web page from elsewhere can point its own host name at 127.0.0.1 (DNS rebinding) and so
    reach a local server as if it were its own origin; its requests still carry that name in
    ``Host``, and are refused (403 ``AccessDeniedException``). A server bound to another
    address (``--host 0.0.0.0``) was exposed on purpose, and is not checked.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("server") and _loopback(scope["server"][0]):
            header = next((v for k, v in scope["headers"] if k == b"host"), b"").decode("latin-1")
            if not _loopback(_host_name(header)):
                error = ApiError(
                    403, "AccessDeniedException",
                    f"Host {header!r} is not this endpoint: a server on a loopback address "
                    "answers requests for localhost, 127.0.0.1 or [::1] only",
                )
                await error.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def api_key_check(api_key: str | None) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency that requires ``api_key`` (None: no check).

    The key is accepted as an ``X-Api-Key`` header, ``Authorization: Bearer KEY``, or HTTP
    Basic authentication with the key as password, and compared in constant time. (The check
    is a coroutine: a plain function would cost every request a hop to a worker thread.)
    """
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
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


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request's body, refused past ``limit`` bytes (413) or ``timeout_s`` seconds (408).

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked
    body as soon as it passes the limit. A client that sends its body too slowly holds a
    connection and memory, so it gets ``timeout_s`` in all.

    Raises:
        ApiError: too large or too slow.
        starlette.requests.ClientDisconnect: the client went away.
    """
    too_large = ApiError(
        413,
        "ValidationError",
        f"the request body is over the {limit:,}-byte limit of this endpoint",
        close=True,
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large  # refused before reading a byte

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # a chunked body without a length
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), timeout_s)
    except (TimeoutError, asyncio.TimeoutError):
        raise ApiError(
            408, "ValidationError", f"the request body did not arrive within {timeout_s:g} s",
            close=True,
        ) from None
