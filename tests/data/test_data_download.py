"""Downloading PCam: resume, verification, errors that name the URL, and idempotent re-runs.

Everything is served by a real HTTP server on 127.0.0.1 (``_file_server``); the files are
small and the checksums are those of the files served, passed in (or, for the command and the
pipeline, put in place of the published ones for the test).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from _file_server import FileServer

from pcamflow._io import locked
from pcamflow.cli import main
from pcamflow.config import Settings
from pcamflow.data import download as download_module
from pcamflow.data import pcam as pcam_module
from pcamflow.data._files import pcam_name
from pcamflow.data.download import RemoteFile, download_pcam
from pcamflow.data.synth import is_synthetic, write_synthetic_pcam
from pcamflow.errors import ChecksumError, DataError, DownloadError
from pcamflow.pipeline import Pipeline
from pcamflow.registry import Registry

X = pcam_name("valid", "x", gz=True)
Y = pcam_name("valid", "y", gz=True)
META = pcam_name("valid", "meta")
DATA = {
    X: hashlib.sha256(b"x").digest() * 10_000,  # 320,000 bytes
    Y: bytes(range(256)) * 12,
    META: b",coord_y,coord_x,tumor_patch,center_tumor_patch,wsi\n0,1,2,False,False,s\n",
}


def remote(name: str, data: bytes) -> RemoteFile:
    if name.endswith(".csv"):  # the meta tables' published sums are MD5s, without sizes
        return RemoteFile(name, md5=hashlib.md5(data).hexdigest())
    return RemoteFile(name, size=len(data), sha256=hashlib.sha256(data).hexdigest())


FILES = [remote(name, data) for name, data in DATA.items()]


@pytest.fixture
def server() -> Iterator[FileServer]:
    served = FileServer(DATA)
    yield served
    served.close()


def fetch(dest: Path, server: FileServer, **options: Any) -> dict[str, Path]:
    options.setdefault("files", FILES)
    return download_pcam(dest, url=server.url, progress=False, **options)


def test_fetches_verifies_and_a_rerun_downloads_nothing(tmp_path: Path,
                                                        server: FileServer) -> None:
    paths = fetch(tmp_path, server)
    assert {name: path.read_bytes() for name, path in paths.items()} == DATA
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(DATA)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))
    served = len(server.requests)
    assert served == 3

    assert fetch(tmp_path, server) == paths
    assert len(server.requests) == served  # complete and verified: nothing fetched
    for record in tmp_path.glob(".*.verified.json"):
        record.unlink()  # without the record the files are hashed again, not fetched
    assert fetch(tmp_path, server) == paths
    assert len(server.requests) == served


def test_files_download_in_parallel(tmp_path: Path) -> None:
    slow = FileServer(DATA, delay=0.3)
    try:
        download_pcam(tmp_path, url=slow.url, files=FILES, workers=3, progress=False)
    finally:
        slow.close()
    assert slow.max_active >= 2


def test_a_dropped_connection_resumes_with_a_range_request(tmp_path: Path,
                                                           server: FileServer) -> None:
    server.fault(X, "drop", after=100_000)
    paths = fetch(tmp_path, server)
    assert paths[X].read_bytes() == DATA[X]
    assert server.requests_of(X) == [None, "bytes=100000-"]


def test_a_run_stopped_by_drops_is_resumed_by_the_next_run(tmp_path: Path,
                                                           server: FileServer) -> None:
    server.fault(X, "drop", after=50_000)
    server.fault(X, "drop", after=50_000)
    with pytest.raises(DownloadError) as error:
        fetch(tmp_path, server, retries=1)
    message = str(error.value)
    assert server.url.format(name=X) in message and "run again to resume" in message
    partial = tmp_path / f".{X}.partial"
    assert partial.read_bytes() == DATA[X][:100_000]  # what came is kept
    assert not (tmp_path / X).exists()
    assert (tmp_path / Y).exists()  # the other files were not held up

    fetch(tmp_path, server)
    assert (tmp_path / X).read_bytes() == DATA[X]
    assert server.requests_of(X)[-1] == "bytes=100000-"
    assert not partial.exists()


def test_a_server_that_ignores_range_starts_the_file_over(tmp_path: Path,
                                                          server: FileServer) -> None:
    server.fault(X, "drop", after=70_000)
    server.fault(X, "whole")
    assert fetch(tmp_path, server)[X].read_bytes() == DATA[X]
    assert server.requests_of(X) == [None, "bytes=70000-"]


def test_a_corrupt_download_is_deleted_and_fetched_again(tmp_path: Path,
                                                         server: FileServer) -> None:
    server.fault(X, "corrupt")
    assert fetch(tmp_path, server)[X].read_bytes() == DATA[X]
    assert server.requests_of(X) == [None, None]


def test_a_download_corrupt_twice_is_an_error_and_leaves_nothing(tmp_path: Path,
                                                                 server: FileServer) -> None:
    server.fault(X, "corrupt")
    server.fault(X, "corrupt")
    with pytest.raises(DownloadError, match="does not match the published checksum twice"):
        fetch(tmp_path, server)
    assert not (tmp_path / X).exists() and not (tmp_path / f".{X}.partial").exists()


@pytest.mark.parametrize(("status", "tries"), [(404, 1), (500, 3)])
def test_an_http_error_names_the_url(tmp_path: Path, server: FileServer, status: int,
                                     tries: int) -> None:
    for _ in range(5):
        server.fault(Y, "status", status=status)
    with pytest.raises(DownloadError) as error:
        fetch(tmp_path, server, retries=2)
    assert f"{server.url.format(name=Y)}: HTTP {status}" in str(error.value)
    assert len(server.requests_of(Y)) == tries  # 404 is final; 500 is tried again
    assert not (tmp_path / Y).exists()
    assert (tmp_path / X).read_bytes() == DATA[X]


@pytest.mark.parametrize(("fault", "words"), [
    ({"seconds": 2.0}, "no answer for 0.3 s"),
    ({"seconds": 2.0, "after": 1000}, "no data for 0.3 s"),
])
def test_a_slow_server_is_an_error_naming_the_url(tmp_path: Path, server: FileServer,
                                                  fault: dict, words: str) -> None:
    server.fault(X, "stall", **fault)
    with pytest.raises(DownloadError) as error:
        fetch(tmp_path, server, timeout=0.3, retries=0)
    assert server.url.format(name=X) in str(error.value) and words in str(error.value)


class _FullDisk:
    """A partial file on a disk with ``room`` bytes left: writes beyond fail with ENOSPC."""

    def __init__(self, handle: IO[bytes], room: int) -> None:
        self._handle = handle
        self._room = room

    def write(self, block: bytes) -> int:
        fits = block[: max(0, self._room - self._handle.tell())]
        self._handle.write(fits)
        self._handle.flush()
        if len(fits) < len(block):
            raise OSError(errno.ENOSPC, "No space left on device")
        return len(block)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def test_a_full_disk_is_an_error_and_the_download_resumes_once_there_is_room(
    tmp_path: Path, server: FileServer
) -> None:
    @contextlib.contextmanager
    def small_disk(path: Path) -> Iterator[Any]:
        with locked(path) as handle:
            handle.seek(0, 2)
            yield _FullDisk(handle, room=120_000)

    with pytest.raises(DownloadError) as error:
        fetch(tmp_path, server, files=[remote(X, DATA[X])], opener=small_disk)
    message = str(error.value)
    assert f".{X}.partial: cannot write (No space left on device)" in message
    assert "free some space and run again to resume" in message
    assert (tmp_path / f".{X}.partial").stat().st_size == 120_000

    fetch(tmp_path, server, files=[remote(X, DATA[X])])  # room again
    assert (tmp_path / X).read_bytes() == DATA[X]
    assert server.requests_of(X)[-1] == "bytes=120000-"


def test_a_file_already_there_that_does_not_match_is_never_replaced(
    tmp_path: Path, server: FileServer
) -> None:
    mine = tmp_path / X
    mine.write_bytes(b"a file of my own")
    with pytest.raises(ChecksumError, match=rf"{X}: already there but does not match"):
        fetch(tmp_path, server)
    assert mine.read_bytes() == b"a file of my own"
    assert server.requests_of(X) == []


def test_a_malformed_url_template_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"holds no \{name\}"):
        download_pcam(tmp_path, url="https://example.org/pcam/", progress=False)
    with pytest.raises(DataError, match="not an http"):
        download_pcam(tmp_path, url="file:///srv/{name}", progress=False)


# --- real (synthetic) PCam files: decompression, the command, the pipeline -----------------


@pytest.fixture
def pcam_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """Synthetic PCam, gzipped as Zenodo serves it; its sums stand in for the published ones."""
    files = write_synthetic_pcam(tmp_path / "zenodo", train=0, valid=24, test=16, gzip=True,
                                 progress=False)
    served = {path.name: path.read_bytes() for path in files.values()}
    for name, data in served.items():
        if name.endswith(".h5.gz"):
            published = (len(data), hashlib.sha256(data).hexdigest())
            monkeypatch.setitem(pcam_module.PUBLISHED_CHECKSUMS, name, published)
        else:
            md5 = hashlib.md5(data).hexdigest()
            monkeypatch.setitem(download_module.PUBLISHED_META_MD5, name, md5)
    server = FileServer(served)
    yield server
    server.close()


def test_decompress_unpacks_each_split(tmp_path: Path, pcam_server: FileServer) -> None:
    dest = tmp_path / "pcam"
    download_pcam(dest, splits=["valid"], url=pcam_server.url, decompress_files=True,
                  progress=False)
    for key in ("x", "y"):
        assert is_synthetic(dest / pcam_name("valid", key))
    assert pcam_module.open_split(dest, "valid", progress=False).length == 24


def test_the_command_downloads_and_prints_what_it_verified(
    tmp_path: Path, pcam_server: FileServer, capsys: pytest.CaptureFixture
) -> None:
    dest = tmp_path / "pcam"
    assert main(["-q", "download", str(dest), "--splits", "valid", "test",
                 "--url", pcam_server.url, "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert f"PCam in {dest}: 6 files, verified" in out
    assert (dest / pcam_name("test", "meta")).exists()
    assert main(["-q", "download", str(dest), "--splits", "valid", "--no-meta",
                 "--url", pcam_server.url]) == 0
    assert len(pcam_server.requests) == 6  # the second run fetched nothing


def test_the_command_reports_a_failure_in_one_line(
    tmp_path: Path, pcam_server: FileServer, capsys: pytest.CaptureFixture
) -> None:
    missing = pcam_server.url.replace("/files/", "/nowhere/")
    assert main(["-q", "download", str(tmp_path), "--splits", "test", "--no-meta",
                 "--url", missing, "--retries", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("pcamflow: error: http://127.0.0.1:")
    assert all("HTTP 404" in line for line in err) and len(err) == 2  # x and y, a line each
    assert main(["download", str(tmp_path), "--url", "https://example.org/"]) == 2
    assert "--url: 'https://example.org/' holds no {name}" in capsys.readouterr().err


def test_the_pipeline_downloads_before_converting(tmp_path: Path,
                                                  pcam_server: FileServer) -> None:
    source = tmp_path / "pcam"
    settings_file = tmp_path / "settings.toml"
    settings_file.write_text(
        f'[pipeline]\nrun_dir = "{tmp_path / "run"}"\ntrainer = "none"\nevaluator = "none"\n'
        f'[data]\nsource = "{source}"\nsplits = ["valid", "test"]\ndownload = true\n'
        f'download_url = "{pcam_server.url}"\n[convert]\nworkers = 1\n'
    )
    assert main(["validate", str(settings_file)]) == 0  # nothing there yet: the run fetches it
    assert not source.exists()
    settings = Settings.from_toml(settings_file)
    pipeline = Pipeline.from_settings(settings, Registry.from_entry_points())
    result = pipeline.run(settings)
    assert result["convert"].counts == {"valid": {"0": 12, "1": 12}, "test": {"0": 8, "1": 8}}
    assert sorted(p.name for p in source.glob("*.gz")) == sorted(
        pcam_name(s, k, gz=True) for s in ("valid", "test") for k in ("x", "y"))
    assert not list(source.glob("*.csv"))  # the stage needs no meta tables
    assert len(pcam_server.requests) == 4
    record = json.loads((source / f".{pcam_name('test', 'x', gz=True)}.verified.json").read_text())
    assert record["sha256"] == pcam_module.PUBLISHED_CHECKSUMS[pcam_name("test", "x", gz=True)][1]


def test_the_download_settings_round_trip_and_join_the_fingerprint_when_set() -> None:
    from pcamflow._io import digest

    plain = Settings()
    fetching = Settings.from_dict({"data": {"download": True, "download_workers": 5}})
    assert Settings.from_dict(fetching.to_dict()) == fetching
    assert "download" not in plain.to_dict()["data"]  # at their defaults they are left out...
    assert digest(plain.data) != digest(fetching.data)  # ...and count once they are set
