"""The local Deployer stage, ``pcamflow predict`` and ``pcamflow teardown``, with real processes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _endpoint import decoded, encode, make_archive, patch
from botocore.exceptions import ClientError

from pcamflow import cli
from pcamflow.artifacts import Endpoint, ModelArtifact
from pcamflow.config import DeploySettings, Settings
from pcamflow.errors import ConfigError, EndpointError, ModelError
from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.deployer import LocalDeployer, local_archive
from pcamflow.local.serving.process import start_server, stop_server
from pcamflow.pipeline import Pipeline
from pcamflow.sagemaker.runtime import EndpointClient
from pcamflow.stages import Context, Trainer

KEY_ENV = "PCAMFLOW_TEST_DEPLOY_KEY"
KEY = "deploy-test-key-0123"


class ArchiveTrainer(Trainer):
    """Stands for training: hands on an archive made beforehand."""

    requires = ()

    def __init__(self, archive: Path) -> None:
        self.archive = archive

    def run(self, context: Context) -> ModelArtifact:
        return ModelArtifact(uri=str(self.archive), hyperparameters={"num_layers": "20"})


def settings_for(run_dir: Path, **deploy: object) -> Settings:
    return Settings.from_dict(
        {
            "pipeline": {"run_dir": str(run_dir)},
            "deploy": {"name": "pcam-local", "port": 0, **deploy},
        }
    )


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


@pytest.fixture
def started():
    """Endpoints a test started; whatever it leaves running is stopped afterwards."""
    endpoints: list[Endpoint] = []
    yield endpoints
    for endpoint in endpoints:
        stop_server(endpoint.pid, spec_file=endpoint.resources.get("spec"))


def test_deploy_predict_redeploy_and_teardown(tmp_path, monkeypatch, capsys, started) -> None:
    archive = make_archive(tmp_path / "model.tar.gz")
    model = load_model_archive(archive)
    monkeypatch.setenv(KEY_ENV, KEY)
    settings = settings_for(tmp_path / "run", api_key_env=KEY_ENV)
    pipeline = Pipeline([("train", ArchiveTrainer(archive)), ("deploy", LocalDeployer())])

    endpoint = pipeline.run(settings)["deploy"]
    assert isinstance(endpoint, Endpoint)
    started.append(endpoint)
    assert endpoint.backend == "local" and endpoint.name == "pcam-local"
    assert endpoint.url.startswith("http://127.0.0.1:")
    assert endpoint.exists()
    assert KEY not in " ".join(_cmdline(endpoint.pid))  # the key is not on the command line

    image = tmp_path / "patch.jpg"
    image.write_bytes(encode(patch(9)))
    want = model.predict_images(decoded(image.read_bytes())[None])[0]
    with pytest.raises(ClientError) as caught:
        EndpointClient.for_target(endpoint.url, name=endpoint.name).predict(image)
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    client = EndpointClient.for_target(endpoint.url, api_key=KEY)
    assert client.predict(image).probabilities == pytest.approx(want, rel=1e-5)

    capsys.readouterr()
    assert cli.main(["predict", endpoint.url, str(image), "--api-key", KEY, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["image"] == str(image)
    assert printed["probabilities"] == pytest.approx(want, rel=1e-5)

    # a re-run of the stage replaces the server rather than leaving the old one running
    second = pipeline.run(settings, from_stage="deploy")["deploy"]
    started.append(second)
    assert second.pid != endpoint.pid and second.exists()
    assert stop_server(endpoint.pid) is False  # already stopped by the re-run

    assert cli.main(["teardown", str(tmp_path / "run")]) == 0
    assert "stopped" in capsys.readouterr().out
    assert not second.exists()

    # a run after the server died deploys again: the recorded endpoint no longer answers /ping
    third = pipeline.run(settings)
    assert third.ran == ("deploy",)
    started.append(third["deploy"])
    assert third["deploy"].exists() and third["deploy"].pid != second.pid

    assert cli.main(["teardown", str(tmp_path / "run")]) == 0
    assert "stopped" in capsys.readouterr().out
    assert cli.main(["teardown", str(tmp_path / "run")]) == 0
    assert "was not running" in capsys.readouterr().out


def test_validate_wants_the_api_key_variable_set(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = settings_for(tmp_path, api_key_env=KEY_ENV)
    context = Context(settings=settings, run_dir=tmp_path, stage_dir=tmp_path / "deploy")
    with pytest.raises(ConfigError, match=f"deploy.api_key_env: .*{KEY_ENV}"):
        LocalDeployer().validate(context)


def test_a_remote_or_missing_model_is_refused(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"s3://bucket/model\.tar\.gz"):
        local_archive("s3://bucket/model.tar.gz")
    with pytest.raises(ModelError, match="not found"):
        local_archive((tmp_path / "nothing.tar.gz").as_uri())


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path) -> None:
    archive = make_archive(tmp_path / "model.tar.gz")
    with pytest.raises(EndpointError, match="exited before it was ready") as caught:
        # an address of no interface here (TEST-NET-1): the bind fails
        start_server(archive, DeploySettings(host="192.0.2.1"), log_dir=tmp_path / "deploy",
                     timeout=120)
    assert "cannot listen on 192.0.2.1" in str(caught.value)  # the log's last lines
    assert not list((tmp_path / "deploy").glob("server.url"))


def test_teardown_leaves_a_process_that_is_not_a_server_alone() -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(EndpointError, match="not a pcamflow server"):
            stop_server(other.pid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    assert stop_server(other.pid) is False
