"""The local Deployer: the endpoint server as a background process, recorded as an Endpoint.

The server runs in its own session, so it outlives the pipeline's process and a Ctrl-C in the
terminal does not stop it; ``pcamflow teardown RUN_DIR`` (or :meth:`LocalDeployer.teardown`)
stops it. Its output goes to ``<stage dir>/server.log``. The API key, when
``deploy.api_key_env`` names one, reaches the server through its environment, never its
command line (which any local user can read). See :mod:`pcamflow.local.serving.process`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.errors import ConfigError, ModelError
from pcamflow.stages import Context, Deployer

__all__ = ["LocalDeployer", "local_archive"]

log = logging.getLogger("pcamflow")


class LocalDeployer(Deployer):
    """Serve the trained ``model.tar.gz`` on this machine (``[deploy]`` settings).

    The endpoint speaks SageMaker's runtime API, so a ``boto3`` ``sagemaker-runtime`` client
    given ``endpoint_url=endpoint.url`` calls it unchanged.
    """

    reads_from = frozenset({"local"})

    def validate(self, context: Context) -> None:
        """Check the API key's environment variable is set, if one is named."""
        from pcamflow._extras import require

        require("local", "the local deployer")
        env = context.settings.deploy.api_key_env
        if env and not os.environ.get(env):
            raise ConfigError(f"deploy.api_key_env: the environment variable {env} is not set")

    def run(self, context: Context) -> Endpoint:
        """Start the server, wait until it answers ``/ping``, and return its Endpoint."""
        from pcamflow.local.serving.process import start_server

        deploy = context.settings.deploy
        archive = local_archive(context.input(ModelArtifact).uri)
        self._stop_previous(context)
        return start_server(
            archive,
            deploy,
            api_key=os.environ.get(deploy.api_key_env) if deploy.api_key_env else None,
            log_dir=context.stage_dir,
        )

    def teardown(self, endpoint: Endpoint, context: Context | None = None) -> None:
        """Stop the endpoint's server (nothing else was created)."""
        from pcamflow.local.serving.process import stop_endpoint

        stop_endpoint(endpoint)

    def _stop_previous(self, context: Context) -> None:
        # a re-run replaces the server this stage started before, rather than leaving it
        # running; the pid file and the server's own command line (which names this stage's
        # spec file) say which process that is
        from pcamflow.errors import EndpointError
        from pcamflow.local.serving.process import PID_FILE, SPEC_FILE, stop_server

        try:
            pid = int((context.stage_dir / PID_FILE).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return
        try:
            if stop_server(pid, spec_file=(context.stage_dir / SPEC_FILE).resolve()):
                log.info("[%s] stopped the server started before (pid %d)",
                         context.stage_name, pid)
        except EndpointError:
            pass  # the id now belongs to another process: nothing of ours to stop


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
