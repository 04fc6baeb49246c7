"""A small HTTP file server on 127.0.0.1 for the download tests, with faults to order.

It answers as RFC 9110 (HTTP Semantics) section 14 and MDN's "HTTP range requests" page
describe a server that supports byte ranges:

- ``GET`` without ``Range``: ``200`` with the whole file and its ``Content-Length``;
- ``GET`` with ``Range: bytes=N-``: ``206 Partial Content`` with bytes ``N`` to the end,
  ``Content-Range: bytes N-(size-1)/size`` and the length of that part;
- ``N`` at or past the end: ``416 Range Not Satisfiable`` with ``Content-Range: bytes */size``;
- a name it does not hold: ``404``.

Faults are queued per file and each is used up by one request: ``drop`` (send the headers and
``after`` bytes, then close the connection), ``corrupt`` (flip a byte in the middle), ``status``
(answer with that status instead), ``stall`` (wait ``seconds`` before the headers, or after
``after`` bytes of the body), ``whole`` (ignore ``Range`` and send ``200`` with the whole file,
as a server without range support does).
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FileServer:
    """Serves ``files`` (name -> bytes) at ``url`` (a template with ``{name}``)."""

    def __init__(self, files: dict[str, bytes], delay: float = 0.0) -> None:
        self.files = dict(files)
        self.delay = delay
        self.faults: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.requests: list[tuple[str, str | None]] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/files/{{name}}?download=1"

    def fault(self, name: str, kind: str, **options: Any) -> None:
        """Queue a fault for the next request of ``name``."""
        self.faults[name].append({"kind": kind, **options})

    def requests_of(self, name: str) -> list[str | None]:
        """The ``Range`` header of each request of ``name`` so far (None: no Range)."""
        return [rng for n, rng in self.requests if n == name]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            match = re.fullmatch(r"/files/([^?]+)(\?.*)?", self.path)
            name = match.group(1) if match else ""
            requested = self.headers.get("Range")
            with server._lock:
                server.requests.append((name, requested))
                server.active += 1
                server.max_active = max(server.max_active, server.active)
                fault = server.faults[name].pop(0) if server.faults[name] else {}
            try:
                time.sleep(server.delay)
                self._answer(name, requested, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what a real server sees too
            finally:
                with server._lock:
                    server.active -= 1

        def _answer(self, name: str, requested: str | None, fault: dict[str, Any]) -> None:
            kind = fault.get("kind")
            if kind == "stall" and "after" not in fault:
                time.sleep(fault["seconds"])
            if kind == "status":
                return self._empty(fault["status"])
            if name not in server.files:
                return self._empty(404)
            data = server.files[name]
            if kind == "corrupt":
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]
            start = 0
            if requested and kind != "whole":
                start = int(re.fullmatch(r"bytes=(\d+)-", requested).group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if kind == "drop":
                self.wfile.write(body[: fault["after"]])
                self.wfile.flush()
                self.close_connection = True
                return None
            if kind == "stall":
                self.wfile.write(body[: fault["after"]])
                self.wfile.flush()
                time.sleep(fault["seconds"])
                self.close_connection = True
                return None
            self.wfile.write(body)
            return None

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler
