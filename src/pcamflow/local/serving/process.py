"""The endpoint as a background process: start it, know it, stop it.

:func:`start_server` writes the server's spec (the archive, the ``[deploy]`` options, where to
write its URL) to ``server.json`` and starts ``python -m pcamflow.local.serving.process
server.json`` in its own session: that process calls :func:`serve_spec`, which calls
:func:`~pcamflow.local.serving.hosting.serve_model`, the function ``pcamflow serve`` calls.
The server outlives the process that started it, and a Ctrl-C in the terminal does not stop
it; :func:`stop_server` does. The API key reaches the server through its environment, never
its command line or a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import psutil

from pcamflow._io import atomic_write
from pcamflow._structure import converter
from pcamflow.artifacts import Endpoint
from pcamflow.config import API_KEY_ENV, DeploySettings
from pcamflow.errors import EndpointError, PcamflowError

__all__ = ["serve_spec", "start_server", "stop_endpoint", "stop_server"]

log = logging.getLogger("pcamflow")

LOG_FILE, URL_FILE, PID_FILE, SPEC_FILE = "server.log", "server.url", "server.pid", "server.json"


def serve_spec(spec_file: str | Path) -> None:
    """Serve what a spec written by :func:`start_server` describes (the child's entry point)."""
    from pcamflow.local.serving.hosting import serve_model

    spec = json.loads(Path(spec_file).read_text(encoding="utf-8"))
    options = converter.structure(spec["options"], DeploySettings)
    serve_model(
        spec["archive"], options, api_key=os.environ.get(API_KEY_ENV) or None,
        url_file=spec["url_file"], log_level=spec.get("log_level", "info"),
    )


def start_server(
    archive: str | Path,
    options: DeploySettings | None = None,
    *,
    api_key: str | None = None,
    log_dir: str | Path = ".",
    timeout: float = 120.0,
) -> Endpoint:
    """Start a server for ``archive`` in the background and wait until it answers ``/ping``.

    Args:
        archive: the ``model.tar.gz``.
        options: the server's name, address and batching (``[deploy]``; None: its defaults;
            port 0: a free one, as the server reports it).
        api_key: the key the server requires (passed in its environment).
        log_dir: where ``server.log``, ``server.url``, ``server.pid`` and ``server.json`` go.
        timeout: seconds to wait for ``/ping``.

    Returns:
        The Endpoint (name, URL, pid; the log, spec and archive in ``resources``).

    Raises:
        EndpointError: the server exited or did not answer in time (the message holds the end
            of its log); a server that did not answer is stopped.
    """
    if not hasattr(os, "posix_spawn"):
        raise EndpointError("the local deployer needs a POSIX system; run `pcamflow serve`")
    options = options or DeploySettings()
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir / LOG_FILE).resolve()
    url_file = (log_dir / URL_FILE).resolve()
    spec_file = (log_dir / SPEC_FILE).resolve()
    url_file.unlink(missing_ok=True)
    archive = Path(archive).resolve()
    with atomic_write(spec_file, encoding="utf-8") as handle:
        json.dump({"archive": str(archive), "options": converter.unstructure(options),
                   "url_file": str(url_file), "log_level": "info"}, handle, indent=2)
    argv = [sys.executable, "-m", "pcamflow.local.serving.process", str(spec_file)]
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if api_key:
        env[API_KEY_ENV] = api_key
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # its own session: it outlives this process, and a signal to its group reaches it alone
    pid = os.posix_spawn(sys.executable, argv, env, file_actions=actions, setsid=True)
    (log_dir / PID_FILE).write_text(f"{pid}\n", encoding="utf-8")
    log.info("started the endpoint server (pid %d); log: %s", pid, log_path)
    try:
        url = _wait_until_ready(pid, url_file, log_path, timeout)
    except BaseException:
        stop_server(pid, spec_file=spec_file)
        raise
    return Endpoint(
        name=options.name,
        url=url,
        backend="local",
        pid=pid,
        resources={"log": str(log_path), "url_file": str(url_file), "spec": str(spec_file),
                   "archive": str(archive)},
    )


def _wait_until_ready(pid: int, url_file: Path, log_path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise EndpointError(
                f"the endpoint server exited before it was ready; {log_path} ends:\n"
                + _tail(log_path)
            )
        if url_file.exists():
            url = url_file.read_text(encoding="utf-8").strip()
            if _pings(url):
                return url
        time.sleep(0.1)
    raise EndpointError(
        f"the endpoint server did not answer /ping within {timeout:.0f} s; {log_path} ends:\n"
        + _tail(log_path)
    )


def _pings(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _process(pid: int) -> psutil.Process | None:
    """The live process ``pid``; None if it is gone (a zombie child of ours is reaped)."""
    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return process
        process.wait(timeout=0)  # our exited child: collect it
    except (psutil.NoSuchProcess, psutil.TimeoutExpired, ChildProcessError):
        pass
    except psutil.AccessDenied:
        return psutil.Process(pid)
    return None


def _alive(pid: int) -> bool:
    return _process(pid) is not None


def _is_server(process: psutil.Process, spec_file: str | Path | None) -> bool:
    """Whether ``process`` runs a pcamflow server (started with ``spec_file``, when given).

    A process id reused by another program, or by another endpoint's server, is not mistaken
    for this one. Where the command line cannot be read, the process is taken at its word.
    """
    try:
        argv: Sequence[str] = process.cmdline()
    except psutil.AccessDenied:
        return True
    except psutil.NoSuchProcess:
        return False
    if "pcamflow.local.serving.process" not in argv:
        return False
    return spec_file is None or str(spec_file) in argv


def stop_server(pid: int, timeout: float = 15.0, *, spec_file: str | Path | None = None) -> bool:
    """Stop the server process ``pid`` and what it started (SIGTERM, SIGKILL after ``timeout``).

    Args:
        pid: the server's process id.
        timeout: seconds to wait for a graceful stop.
        spec_file: the ``server.json`` the server was started with, when known: the process
            must have it on its command line.

    Returns:
        True if it was running, False if it had stopped already.

    Raises:
        EndpointError: ``pid`` runs something other than a pcamflow server (the id was
            reused after the server stopped), which is left alone; or it did not stop.
    """
    process = _process(pid)
    if process is None:
        return False
    if not _is_server(process, spec_file):
        raise EndpointError(
            f"process {pid} is not a pcamflow server (the endpoint stopped and its id was "
            "reused); leaving it alone"
        )
    try:
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return True
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    _, alive = psutil.wait_procs(alive, timeout=5.0)
    if alive:
        raise EndpointError(f"process {pid} did not stop")
    return True


def stop_endpoint(endpoint: Endpoint) -> bool:
    """Stop a local endpoint's server; True if it was running."""
    if endpoint.backend != "local":
        raise EndpointError(f"endpoint {endpoint.name!r} is a {endpoint.backend} endpoint")
    if not endpoint.pid:
        raise EndpointError(f"endpoint {endpoint.name!r} has no process id recorded")
    stopped = stop_server(endpoint.pid, spec_file=endpoint.resources.get("spec"))
    log.info(
        "endpoint %s (pid %d) %s", endpoint.name, endpoint.pid,
        "stopped" if stopped else "was not running",
    )
    return stopped


def main(argv: Sequence[str]) -> int:
    """The server process :func:`start_server` spawns: serve ``argv[0]``'s spec; exit status."""
    if len(argv) != 1:
        print("usage: python -m pcamflow.local.serving.process SERVER_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        serve_spec(argv[0])
    except PcamflowError as error:  # one line in the log, as the command line prints it
        print(f"pcamflow: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
