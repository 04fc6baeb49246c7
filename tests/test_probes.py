"""Probes: whether an artifact's content is there, asked by URI scheme; the runner's use of them."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcamflow import Pipeline, Settings
from pcamflow.artifacts import Endpoint, ImageDataset, ModelArtifact
from pcamflow.errors import PcamflowError
from pcamflow.probes import by_scheme, http_probe, local_probe
from pcamflow.stages import Context, DataConverter


def test_local_paths_and_file_uris(tmp_path: Path) -> None:
    model = tmp_path / "model.tar.gz"
    model.write_bytes(b"model")
    assert local_probe(str(model)) and local_probe(model.as_uri())
    assert not local_probe(str(tmp_path / "gone")) and not local_probe((tmp_path / "gone").as_uri())
    assert ModelArtifact(uri=model.as_uri()).exists()
    model.unlink()
    assert not ModelArtifact(uri=str(model)).exists()


@pytest.fixture
def server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 whose ``/ping`` answers 200 and anything else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ping" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_a_local_endpoint_is_there_while_its_ping_answers_200(server: str) -> None:
    assert http_probe(f"{server}/ping") and not http_probe(f"{server}/other")
    assert Endpoint(name="pcam-local", url=server).exists()
    assert Endpoint(name="pcam-local", url=server + "/").locations() == (f"{server}/ping",)


def test_a_dead_local_endpoint_is_not_there(server: str) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not Endpoint(name="pcam-local", url=f"http://127.0.0.1:{port}").exists()


def test_a_sagemaker_endpoint_is_not_probed() -> None:
    endpoint = Endpoint(name="pcam", backend="sagemaker", region="eu-west-1")
    asked: list[str] = []
    assert endpoint.exists(lambda location: asked.append(location) or False)
    assert asked == []


def test_a_probe_passed_in_answers_for_its_scheme() -> None:
    there = {"mem://models/a"}
    asked: list[str] = []

    def memory(location: str) -> bool:
        asked.append(location)
        return location in there

    probe = by_scheme({"mem": memory})
    assert ModelArtifact(uri="mem://models/a").exists(probe)
    assert not ModelArtifact(uri="mem://models/b").exists(probe)
    assert asked == ["mem://models/a", "mem://models/b"]


def test_a_location_without_a_probe_is_an_error_naming_its_scheme() -> None:
    with pytest.raises(PcamflowError, match=r"s3://bucket/model\.tar\.gz needs a probe for s3://"):
        ModelArtifact(uri="s3://bucket/model.tar.gz").exists()


class RemoteConverter(DataConverter):
    """Records each run; its images are 'in' a place only a probe passed in can see."""

    def run(self, context: Context) -> ImageDataset:
        with open(context.run_dir / "calls.log", "a") as handle:
            handle.write("convert\n")
        return ImageDataset(root="mem://images/", counts={"train": {"0": 1}})


def test_the_runner_asks_the_probes_passed_in_services(tmp_path: Path) -> None:
    settings = Settings.from_dict({"pipeline": {"run_dir": str(tmp_path / "run")}})
    pipeline = Pipeline([("convert", RemoteConverter())])
    there = {"mem://images/"}
    services = {"probes": {"mem": lambda location: location in there}}

    assert pipeline.run(settings, services=services).ran == ("convert",)
    assert pipeline.run(settings, services=services).ran == ()  # still there: complete
    there.clear()
    assert pipeline.run(settings, services=services).ran == ("convert",)  # gone: runs again
    with pytest.raises(PcamflowError, match="mem://"):
        pipeline.run(settings)  # nothing can say whether mem:// content is there
    assert (settings.run_dir / "calls.log").read_text().split() == ["convert", "convert"]
