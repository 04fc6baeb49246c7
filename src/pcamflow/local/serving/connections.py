"""Connection limits of the local endpoint: a read timeout, a connection cap, no Nagle delay.

uvicorn's own guard (``limit_concurrency``) answers a plain-text 503 to every request, ``/ping``
included, once that many connections are open, so a few hundred idle connections took the
endpoint down; and it never times out a connection that trickles its request head. The
protocol here is uvicorn's h11 protocol with these changes:

- A connection must send a complete request head within ``read_timeout_s`` of opening (or of
  its previous answer), else it is answered 408 and closed. (The body's own deadline is the
  app's: see :func:`pcamflow.local.serving.app.create_app`.)
- At most ``max_connections`` are open. A new connection beyond that closes an idle one: one
  that never sent a whole request (a half-open one) first, the oldest first, and a client's
  kept-alive one only when there is none, the one idle longest first; a connection whose
  request has arrived but is not read yet is not idle. Failing that, the one sending its body
  the longest is answered 503 and closed. While new connections' requests are still unread,
  up to twice the limit may be open for a moment; beyond, or when every connection holds a
  request, the new one is answered 503 ``ServiceUnavailable`` and closed. A flood of idle
  connections thus costs the flooder its own connections, and ``/ping`` keeps answering.
- ``TCP_NODELAY`` is set on every connection: uvicorn writes an answer's head and body
  separately, and with Nagle's algorithm the body waited for the client's delayed ACK, 40 ms
  per request.
- Every error it answers itself (400 for a malformed request, 408, 503) is in the SageMaker
  runtime API's format, an ``x-amzn-ErrorType`` header and a ``{"message": ...}`` body.

:func:`guarded_protocol` makes the protocol class for given limits; ``hosting`` passes it to
uvicorn as its ``http`` implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import time
from http import HTTPStatus
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

try:
    import fcntl
    import termios
except ImportError:  # pragma: no cover - not POSIX: unread requests cannot be seen
    fcntl = termios = None  # type: ignore[assignment]

__all__ = ["GuardedProtocol", "error_bytes", "guarded_protocol"]

_GRACE_S = 0.05  # a new connection's first bytes are read within this, even on a busy loop

log = logging.getLogger("pcamflow.server")


def error_bytes(status: int, error_type: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer in the runtime API's format, closing the connection."""
    body = json.dumps({"message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        f"x-amzn-ErrorType: {error_type}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class GuardedProtocol(H11Protocol):
    """uvicorn's h11 protocol with a read timeout, a connection cap and ``TCP_NODELAY``."""

    max_connections: ClassVar[int] = 64
    read_timeout_s: ClassVar[float] = 10.0

    _head_timer: asyncio.TimerHandle | None = None
    _waiting_since = 0.0  # when it last started waiting for a request head
    _partial = False  # bytes of a request head have arrived
    _served = 0  # answers sent on this connection
    _recheck: asyncio.TimerHandle | None = None
    _refused: ClassVar[int] = 0  # connections refused since the last warning in the log
    _refused_logged: ClassVar[float] = -1e9

    # --- uvicorn's protocol interface ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wait_for_head()
        if len(self.connections) > self.max_connections:
            self._enforce_limit()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._recheck is not None:
            self._recheck.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._partial = True
        super().data_received(data)
        if self._in_request():
            self._stop_head_timer()

    def on_response_complete(self) -> None:
        self._served += 1
        super().on_response_complete()
        if not self.transport.is_closing() and not self._in_request():
            self._wait_for_head()

    def send_400_response(self, msg: str) -> None:
        self._answer(400, "ValidationError", f"the request is not valid HTTP/1.1: {msg}")

    # --- the limits ------------------------------------------------------------------------------

    def _in_request(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _reading_body(self) -> bool:
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started

    def _wait_for_head(self) -> None:
        self._stop_head_timer()
        self._waiting_since = time.monotonic()
        self._partial = False
        self._head_timer = self.loop.call_later(self.read_timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._in_request():
            return
        if self._partial:
            self._answer(
                408, "ValidationError",
                f"the request head did not arrive within {self.read_timeout_s:g} s",
            )
        else:  # an idle connection: close it quietly, as keep-alive expiry does
            self.transport.close()

    def _enforce_limit(self) -> None:
        """Close connections until at most ``max_connections`` are open (see the module)."""
        first_look, self._recheck = self._recheck is None, None
        if self.transport.is_closing():
            return
        live = [c for c in self.connections
                if isinstance(c, GuardedProtocol) and not c.transport.is_closing()]
        excess = len(live) - self.max_connections
        # idle: no request in progress and none about to start. A connection made a moment
        # ago has not been read yet (its request may be in its socket): it is judged at the
        # next look; an older one is idle unless bytes wait unread in its socket
        now = time.monotonic()
        idle = sorted(
            (c for c in live if c is not self and not c._in_request()
             and (c._partial or c._served or now - c._waiting_since >= _GRACE_S)),
            key=lambda c: (c._served > 0, c._waiting_since),  # never-served ones first
        )
        for victim in idle:
            if excess <= 0:
                return
            if not _unread(victim.transport):
                victim.transport.close()
                excess -= 1
        for victim in sorted((c for c in live if c is not self and c._reading_body()),
                             key=lambda c: c._waiting_since):
            if excess <= 0:
                return
            victim._answer(
                503, "ServiceUnavailable",
                "the endpoint is at its connection limit and this request's body was the "
                "slowest to arrive; send it again",
            )
            excess -= 1
        if excess <= 0 or (not first_look and self._in_request()):
            return  # (a request read meanwhile, /ping say, is let through)
        if first_look and len(live) <= 2 * self.max_connections:
            # new connections whose requests are not read yet: look again once they are
            self._recheck = self.loop.call_later(_GRACE_S, self._enforce_limit)
            return
        if self._served:  # it made its requests meanwhile, and is idle now
            self.transport.close()
            return
        GuardedProtocol._refused += 1
        if now - GuardedProtocol._refused_logged >= 10.0:  # a flood must not flood the log too
            log.warning("connection limit (%d) reached: %d new connection(s) refused",
                        self.max_connections, GuardedProtocol._refused)
            GuardedProtocol._refused, GuardedProtocol._refused_logged = 0, now
        self._answer(
            503, "ServiceUnavailable",
            f"the endpoint is at its limit of {self.max_connections} connections, each with "
            "a request in progress; try again",
        )

    def _answer(self, status: int, error_type: str, message: str) -> None:
        """Answer an error on this connection, outside any request, and close it."""
        self._stop_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's answer, if any, is not sent
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            self.transport.write(error_bytes(status, error_type, message))
            self.transport.close()


def _unread(transport: asyncio.BaseTransport) -> bool:
    """Whether bytes have arrived on the transport's socket that it has not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return False
    try:  # one cheap system call: this runs for many connections under a flood
        count = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:  # the socket is gone
        return False
    return struct.unpack("i", count)[0] > 0


def guarded_protocol(max_connections: int, read_timeout_s: float) -> type[GuardedProtocol]:
    """The protocol class for uvicorn's ``http`` setting, with these limits."""
    attributes: dict[str, Any] = {
        "max_connections": max_connections,
        "read_timeout_s": read_timeout_s,
    }
    return type("GuardedProtocol", (GuardedProtocol,), attributes)
