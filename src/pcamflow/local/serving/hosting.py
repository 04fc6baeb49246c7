"""Running an endpoint app on a real socket: in the foreground, or in a background thread.

The socket is bound before uvicorn starts, so port 0 (any free port) works and the caller
learns the URL at once: :func:`run_server` can write it to a file for a parent process, and
:class:`ServerThread` has it as ``.url``. Both serve with the connection limits of
:mod:`pcamflow.local.serving.connections` (``max_connections``, ``read_timeout_s``; by
default those of ``[deploy]``).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcamflow.config import DeploySettings
from pcamflow.errors import EndpointError

if TYPE_CHECKING:
    import uvicorn

__all__ = ["ServerThread", "bind_socket", "run_server", "serve_model", "socket_url"]

log = logging.getLogger("pcamflow.server")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (port 0: a free one), IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise EndpointError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    """The ``http://`` base URL a bound socket is reached at."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):  # listening everywhere: reach it through loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_DEFAULTS = DeploySettings()


def _uvicorn_config(
    app: Any, log_level: str, access_log: bool, max_connections: int, read_timeout_s: float
) -> uvicorn.Config:
    import uvicorn

    from pcamflow.local.serving.connections import guarded_protocol

    return uvicorn.Config(
        app,
        http=guarded_protocol(max_connections, read_timeout_s),
        ws="none",
        log_level=log_level,
        access_log=access_log,  # request lines only: uvicorn never logs bodies
        server_header=False,
        # the protocol caps connections itself, and keeps /ping answering when they run out
        limit_concurrency=None,
        timeout_graceful_shutdown=10,
    )


class ServerThread:
    """Run an app on a real socket in a background thread (for tests, notebooks, scripts).

    >>> # with ServerThread(create_app(model, name="demo")) as server:
    >>> #     requests.post(f"{server.url}/invocations", ...)

    Args:
        app: the ASGI application.
        host: the address to bind (127.0.0.1 unless told otherwise).
        port: the port (0: a free one).
        log_level: uvicorn's log level.
        max_connections: connections open at once (see ``connections``).
        read_timeout_s: seconds a client has to send a request's head.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        *,
        max_connections: int = _DEFAULTS.max_connections,
        read_timeout_s: float = _DEFAULTS.read_timeout_s,
    ) -> None:
        import uvicorn

        self._sock = bind_socket(host, port)
        self.url = socket_url(self._sock)
        config = _uvicorn_config(app, log_level, False, max_connections, read_timeout_s)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EndpointError(f"the server at {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_server(
    app: Any,
    sock: socket.socket,
    *,
    url_file: str | Path | None = None,
    log_level: str = "info",
    max_connections: int = _DEFAULTS.max_connections,
    read_timeout_s: float = _DEFAULTS.read_timeout_s,
) -> None:
    """Serve ``app`` on ``sock`` in this thread until interrupted (SIGINT or SIGTERM).

    Args:
        app: the ASGI application.
        sock: a socket bound already (by :func:`bind_socket`); it is closed at the end.
        url_file: where to write the base URL once the app is about to serve (what a parent
            process waits for when it asked for port 0).
        log_level: uvicorn's log level.
        max_connections: connections open at once (see ``connections``).
        read_timeout_s: seconds a client has to send a request's head.
    """
    import uvicorn

    url = socket_url(sock)
    if url_file is not None:
        from pcamflow._io import atomic_write

        with atomic_write(url_file, encoding="utf-8") as handle:
            handle.write(url + "\n")
    log.info("serving on %s", url)
    try:
        config = _uvicorn_config(app, log_level, True, max_connections, read_timeout_s)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def serve_model(
    archive: str | Path,
    options: DeploySettings | None = None,
    *,
    api_key: str | None = None,
    url_file: str | Path | None = None,
    log_level: str = "info",
) -> None:
    """Load ``archive`` and serve it until interrupted (what ``pcamflow serve`` does).

    Args:
        archive: the ``model.tar.gz``.
        options: the server's name, address, batching and limits (``[deploy]``; None: its
            defaults).
            ``options.threads`` sets torch's intra-op threads for the forward pass; on a
            machine shared with other work, fewer threads avoid oversubscription.
        api_key: the key every route but ``/ping`` requires (None: none).
        url_file: where to write the base URL once the server is about to serve.
        log_level: uvicorn's log level.

    Raises:
        ModelError: the archive is missing or not a valid model archive (before anything
            listens).
        EndpointError: the address cannot be bound.
    """
    options = options or DeploySettings()
    # bind first: a taken port or a wrong address fails at once, before the slow imports
    sock = bind_socket(options.host, options.port)
    try:
        from pcamflow.local.model.archive import load_model_archive
        from pcamflow.local.serving.app import create_app

        model = load_model_archive(archive)
        if options.threads:
            import torch

            torch.set_num_threads(options.threads)
        log.info(
            "loaded %s (%s, classes %s)", archive, model.meta.architecture,
            list(model.meta.classes),
        )
        app = create_app(
            model,
            name=options.name,
            api_key=api_key,
            max_batch_size=options.max_batch_size,
            max_wait_ms=options.max_wait_ms,
            max_body_bytes=options.max_body_bytes,
            max_image_pixels=options.max_pixels,
            max_images=options.max_images,
            read_timeout_s=options.read_timeout_s,
        )
        run_server(
            app, sock, url_file=url_file, log_level=log_level,
            max_connections=options.max_connections, read_timeout_s=options.read_timeout_s,
        )
    finally:
        sock.close()
