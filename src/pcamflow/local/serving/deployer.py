"""The local Deployer: ``pcamflow serve`` as a background process, recorded as an Endpoint.

The server runs in its own session (process group), so it outlives the pipeline's process
and a Ctrl-C in the terminal does not stop it; ``pcamflow teardown RUN_DIR`` (or
:meth:`LocalDeployer.teardown`) stops it. Its output goes to ``<stage dir>/server.log``.
The API key, when ``deploy.api_key_env`` names one, reaches the server through its
environment, never its command line (which any local user can read).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import ConfigError, EndpointError, ModelError
from pcamflow.stages import Context, Deployer

__all__ = ["LocalDeployer", "start_server", "stop_server"]

log = logging.getLogger("pcamflow")

SERVER_KEY_ENV = "PCAMFLOW_API_KEY"  # what `pcamflow serve` reads (pcamflow.local.serving.app)
LOG_FILE, URL_FILE, PID_FILE = "server.log", "server.url", "server.pid"


class LocalDeployer(Deployer):
    """Serve the trained ``model.tar.gz`` on this machine (``[deploy]`` settings).

    The endpoint speaks SageMaker's runtime API, so a ``boto3`` ``sagemaker-runtime`` client
    given ``endpoint_url=endpoint.url`` calls it unchanged.
    """

    def validate(self, context: Context) -> None:
        """Check the API key's environment variable is set, if one is named."""
        from pcamflow._extras import require

        require("local", "the local deployer")
        env = context.settings.deploy.api_key_env
        if env and not os.environ.get(env):
            raise ConfigError(f"deploy.api_key_env: the environment variable {env} is not set")

    def run(self, context: Context) -> Endpoint:
        """Start the server, wait until it answers ``/ping``, and return its Endpoint."""
        deploy = context.settings.deploy
        archive = local_archive(context.input(ModelArtifact).uri)
        self._stop_previous(context)
        return start_server(
            archive,
            name=deploy.name,
            host=deploy.host,
            port=deploy.port,
            api_key=os.environ.get(deploy.api_key_env) if deploy.api_key_env else None,
            max_batch_size=deploy.max_batch_size,
            max_wait_ms=deploy.max_wait_ms,
            log_dir=context.stage_dir,
        )

    def teardown(self, endpoint: Endpoint, context: Context | None = None) -> None:
        """Stop the endpoint's server (nothing else was created)."""
        stop_endpoint(endpoint)

    def _stop_previous(self, context: Context) -> None:
        # a re-run replaces the server this stage started before, rather than leaving it
        # running; the pid file and the server's own command line (which names this stage's
        # folder) say which process that is
        pid_file = context.stage_dir / PID_FILE
        try:
            pid = int(pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return
        url_file = (context.stage_dir / URL_FILE).resolve()
        if _alive(pid) and _is_server(pid, url_file):
            log.info("[%s] stopping the server started before (pid %d)", context.stage_name, pid)
            stop_server(pid, url_file=url_file)


def local_archive(uri: str) -> Path:
    """The local path of a model archive URI (a path or ``file://`` URI).

    Raises:
        ModelError: the URI is remote or the file is missing.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise ModelError(
            f"{uri}: the local deployer serves a model.tar.gz on this machine; "
            "download it first or use deployer = \"sagemaker\""
        )
    path = Path(parsed.path if parsed.scheme == "file" else uri).resolve()
    if not path.is_file():
        raise ModelError(f"{path}: model archive not found")
    return path


def start_server(
    archive: str | Path,
    *,
    name: str = "pcamflow",
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    max_batch_size: int = 32,
    max_wait_ms: float = 5.0,
    log_dir: str | Path = ".",
    timeout: float = 120.0,
) -> Endpoint:
    """Start ``pcamflow serve ARCHIVE`` in the background and wait until it answers.

    Args:
        archive: the ``model.tar.gz``.
        name: the endpoint's name.
        host: the address to bind.
        port: the port (0: a free one, as the server reports it).
        api_key: the key the server requires (passed in its environment).
        max_batch_size: the most images in one forward pass.
        max_wait_ms: how long a batch waits for requests on their way.
        log_dir: where ``server.log`` and ``server.url`` are written.
        timeout: seconds to wait for ``/ping``.

    Returns:
        The Endpoint (name, URL, pid; the log and archive in ``resources``).

    Raises:
        EndpointError: the server exited or did not answer in time (the message holds the end
            of its log); a server that did not answer is stopped.
    """
    if not hasattr(os, "posix_spawn"):
        raise EndpointError("the local deployer needs a POSIX system; run `pcamflow serve`")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir / LOG_FILE).resolve()
    url_file = (log_dir / URL_FILE).resolve()
    url_file.unlink(missing_ok=True)
    argv = [
        sys.executable, "-m", "pcamflow.cli", "serve", str(Path(archive).resolve()),
        "--name", name, "--host", host, "--port", str(port),
        "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms),
        "--url-file", str(url_file),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != SERVER_KEY_ENV}
    if api_key:
        env[SERVER_KEY_ENV] = api_key
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
        stop_server(pid, url_file=url_file)
        raise
    return Endpoint(
        name=name,
        url=url,
        backend="local",
        pid=pid,
        resources={
            "log": str(log_path),
            "url_file": str(url_file),
            "archive": str(Path(archive).resolve()),
        },
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


def _reap(pid: int) -> bool:
    """Collect ``pid`` if it is our exited child; True if it is gone for good."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        return False
    return done == pid


def _alive(pid: int) -> bool:
    if _reap(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie answers kill(0) but is gone
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_server(pid: int, url_file: str | Path | None = None) -> bool:
    """Whether ``pid`` runs ``pcamflow ... serve`` (True where /proc cannot say).

    With ``url_file``, it must also be the server started to write that file: a process id
    reused by another endpoint is not mistaken for this one.
    """
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    if not (any(b"pcamflow" in arg for arg in argv) and b"serve" in argv):
        return False
    return url_file is None or os.fsencode(str(url_file)) in argv


def stop_server(pid: int, timeout: float = 15.0, *, url_file: str | Path | None = None) -> bool:
    """Stop the server process ``pid`` (SIGTERM to its group, SIGKILL after ``timeout``).

    Args:
        pid: the server's process id.
        timeout: seconds to wait for a graceful stop.
        url_file: the ``--url-file`` the server was started with, when known: the process
            must have it on its command line.

    Returns:
        True if it was running, False if it had stopped already.

    Raises:
        EndpointError: ``pid`` runs something other than a pcamflow server (the id was
            reused after the server stopped), which is left alone.
    """
    if not _alive(pid):
        return False
    if not _is_server(pid, url_file):
        raise EndpointError(
            f"process {pid} is not a pcamflow server (the endpoint stopped and its id was "
            "reused); leaving it alone"
        )
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # its own group: the server and any worker it started
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.05)
    raise EndpointError(f"process {pid} did not stop")


def stop_endpoint(endpoint: Endpoint) -> bool:
    """Stop a local endpoint's server; True if it was running."""
    if endpoint.backend != "local":
        raise EndpointError(f"endpoint {endpoint.name!r} is a {endpoint.backend} endpoint")
    if not endpoint.pid:
        raise EndpointError(f"endpoint {endpoint.name!r} has no process id recorded")
    stopped = stop_server(endpoint.pid, url_file=endpoint.resources.get("url_file"))
    log.info(
        "endpoint %s (pid %d) %s", endpoint.name, endpoint.pid,
        "stopped" if stopped else "was not running",
    )
    return stopped

