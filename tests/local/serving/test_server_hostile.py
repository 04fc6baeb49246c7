"""The endpoint under hostile input: each attack against a real server on 127.0.0.1.

Each test reproduces an attack (or a mistake) and checks the clear error in the runtime API's
format, that the work it asked for was not done (or was dropped), and that other clients and
``/ping`` are unaffected. Nothing here asserts a duration: the timeouts are generous bounds.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from _endpoint import (
    GatedModel,
    encode,
    flat,
    make_archive,
    npy,
    parse_raw,
    patch,
    raw_exchange,
    refused,
    wait_for,
)

from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.app import create_app
from pcamflow.local.serving.hosting import ServerThread

JPEG = {"Content-Type": "image/jpeg"}
PNG = {"Content-Type": "image/png"}
NPY = {"Content-Type": "application/x-npy"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model_archive(make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz"))


@pytest.fixture(scope="module")
def server(model):
    app = create_app(model, name="hostile")
    with ServerThread(app) as running:
        running.app = app
        yield running


@pytest.fixture
def client(server):
    """A client of the shared server; after each test, the server still answers well."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http
        assert http.get("/ping").status_code == 200
        good = http.post("/invocations", content=encode(patch()), headers=JPEG)
        assert good.status_code == 200 and len(good.json()) == 2


def _predicted(server) -> int:
    return server.app.state.batcher.stats.images


def _png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side black pixels, compressed to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


# --- 1. work per request is bounded, interleaved, and dropped when the client goes ---------------


def test_ten_thousand_tiny_images_in_a_small_npy_are_refused_unseen(server, client) -> None:
    """The attack: a 30 KB .npy of 10,000 1x1 images once held the model for 39 s."""
    body = npy(np.zeros((10_000, 1, 1, 3), np.uint8))
    assert len(body) < 31_000
    before = _predicted(server)
    reply = client.post("/invocations", content=body, headers=NPY)
    message = refused(reply, 400, "ValidationError")
    assert "10,000 images" in message and "64" in message
    assert _predicted(server) == before  # not one image reached the model


def test_images_and_pixels_per_request_are_bounded(server, client) -> None:
    before = _predicted(server)
    too_many = client.post("/invocations", content=npy(np.zeros((65, 96, 96, 3), np.uint8)),
                           headers=NPY)
    assert "65 images" in refused(too_many, 400, "ValidationError")
    too_large = client.post("/invocations", content=npy(np.zeros((30, 200, 200, 3), np.uint8)),
                            headers=NPY)
    assert "1,200,000 pixels in all" in refused(too_large, 400, "ValidationError")
    big_image = client.post("/invocations", content=encode(flat(90, 1100), "PNG"), headers=PNG)
    assert "1100x1100" in refused(big_image, 400, "ValidationError")
    assert _predicted(server) == before
    at_the_limit = client.post("/invocations", content=npy(np.zeros((64, 96, 96, 3), np.uint8)),
                               headers=NPY)
    assert at_the_limit.status_code == 200 and len(at_the_limit.json()) == 64


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (encode(flat(200, 1), "PNG"), PNG),
        (encode(np.full((95, 96, 3), 200, np.uint8), "PNG"), PNG),
        (npy(np.full((3, 1, 1, 3), 200, np.uint8)), NPY),
    ],
    ids=["1x1-png", "95x96-png", "1x1-npy"],
)
def test_images_smaller_than_the_model_input_are_refused(server, client, body, headers) -> None:
    """A 1x1 image used to be scaled up and given a confident 0.88 'tumour'."""
    before = _predicted(server)
    reply = client.post("/invocations", content=body, headers=headers)
    assert "smaller than the model's 96x96 input" in refused(reply, 400, "ValidationError")
    assert _predicted(server) == before


def test_a_large_request_is_interleaved_with_a_small_one(model) -> None:
    gated = GatedModel(model)
    app = create_app(gated, name="fair", max_batch_size=8, max_wait_ms=0)
    large = npy(np.stack([flat(7)] * 64))
    with (
        ServerThread(app) as running,
        httpx.Client(base_url=running.url, timeout=60) as http,
        ThreadPoolExecutor(2) as pool,
    ):
        big = pool.submit(http.post, "/invocations", content=large, headers=NPY)
        wait_for(lambda: len(gated.passes) == 1, what="the first slice of the large request")
        small = pool.submit(http.post, "/invocations", content=encode(flat(200), "PNG"),
                            headers=PNG)
        wait_for(lambda: app.state.batcher.waiting == 1, what="the small request to queue")
        assert http.get("/ping").status_code == 200  # the event loop is free meanwhile
        gated.gate.set()
        small_reply, big_reply = small.result(60), big.result(60)
    assert small_reply.status_code == 200 and big_reply.status_code == 200
    assert len(big_reply.json()) == 64
    assert gated.passes[0] == [7] * 8
    assert 200 in gated.passes[1]  # the next pass, not after the large request's seven others
    assert sum(len(p) for p in gated.passes) == 65


def test_the_work_of_a_client_that_went_away_is_dropped(model) -> None:
    gated = GatedModel(model)
    app = create_app(gated, name="gone", max_batch_size=8, max_wait_ms=0)
    body = npy(np.stack([flat(7)] * 64))
    stats = app.state.batcher.stats
    with ServerThread(app) as running:
        parsed = urlparse(running.url)
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-npy\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_for(lambda: len(gated.passes) == 1, what="the first slice to reach the model")
        sock.close()  # the client gives up while its first slice is being predicted
        wait_for(lambda: stats.abandoned == 1, what="the server to notice the client left")
        gated.gate.set()
        with httpx.Client(base_url=running.url, timeout=60) as http:
            assert http.get("/ping").status_code == 200
            reply = http.post("/invocations", content=encode(patch()), headers=JPEG)
            assert reply.status_code == 200
    assert stats.images == 8 + 1  # its first slice, and the request after it
    assert stats.dropped == 56


# --- 2. decompression bombs are decoded off the event loop, within the pixel budget -------------


def test_the_reported_bomb_is_refused_from_its_header(server, client) -> None:
    bomb = _png_bomb(4096)  # the report's 58 KB file: 150 MB and 0.4 s once decoded
    assert len(bomb) < 60_000
    before = _predicted(server)
    reply = client.post("/invocations", content=bomb, headers=PNG)
    assert "4096x4096" in refused(reply, 400, "ValidationError")
    assert _predicted(server) == before


def test_ping_answers_while_a_body_waits_for_the_decoders(server, client) -> None:
    """Bodies are decoded in the decoder threads: with those busy, the event loop is not."""
    decoder = server.app.state.decoder
    release = threading.Event()
    blockers = [decoder.submit(release.wait, 60) for _ in range(2)]
    try:
        with ThreadPoolExecutor(1) as pool:
            bomb = pool.submit(client.post, "/invocations", content=_png_bomb(1024), headers=PNG)
            for _ in range(5):
                assert client.get("/ping").status_code == 200
            assert not bomb.done()  # its decoding waits for a decoder thread
            release.set()
            reply = bomb.result(60)
    finally:
        release.set()
        for blocker in blockers:
            blocker.result(60)
    assert reply.status_code == 200 and len(reply.json()) == 2  # 1024x1024: at the limit


def test_sixteen_concurrent_bombs_are_answered_and_the_server_stays_up(client) -> None:
    bombs = [_png_bomb(1024), _png_bomb(4096)] * 8
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(
            lambda body: client.post("/invocations", content=body, headers=PNG), bombs
        ))
    assert [r.status_code for r in replies] == [200, 400] * 8


# --- 3. connections: idle, trickling and overload ----------------------------------------------


def test_hundreds_of_idle_connections_do_not_lock_out_other_clients(model) -> None:
    """The attack: 300 idle connections once got every client a plain-text 503, /ping too."""
    app = create_app(model, name="crowded")
    with ServerThread(app, max_connections=16) as running:
        parsed = urlparse(running.url)
        idle = []
        for index in range(300):
            sock = socket.create_connection((parsed.hostname, parsed.port), timeout=30)
            if index % 2:  # half of them start a request and never finish its head
                sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            idle.append(sock)
        try:
            closed: list[bytes] = []
            deadline = time.monotonic() + 30
            while len(closed) < 300 - 2 * 16 and time.monotonic() < deadline:
                for sock in select.select(idle, [], [], 0.1)[0]:
                    idle.remove(sock)
                    closed.append(_read_to_end(sock))
                    sock.close()
            assert len(closed) >= 300 - 2 * 16  # the server closed all but (briefly) 2x its limit
            for answer in filter(None, closed):  # those refused at once were told why
                status, headers, body = parse_raw(answer)
                assert status == 503 and headers["x-amzn-errortype"] == "ServiceUnavailable"
                assert json.loads(body)["message"]
            with httpx.Client(base_url=running.url, timeout=30) as http:
                assert http.get("/ping").status_code == 200
                reply = http.post("/invocations", content=encode(patch()), headers=JPEG)
                assert reply.status_code == 200 and len(reply.json()) == 2
        finally:
            for sock in idle:
                sock.close()


def _read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def test_a_trickled_request_head_times_out_in_the_runtime_format(model) -> None:
    with ServerThread(create_app(model, name="slow"), read_timeout_s=0.5) as running:
        answer = raw_exchange(running.url, b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        status, headers, body = parse_raw(answer)
        assert status == 408 and headers["x-amzn-errortype"] == "ValidationError"
        assert "request head" in json.loads(body)["message"]
        assert raw_exchange(running.url, b"") == b""  # an idle connection is closed quietly
        assert httpx.get(f"{running.url}/ping").status_code == 200


def test_a_trickled_body_times_out_in_the_runtime_format(model) -> None:
    app = create_app(model, name="slow-body", read_timeout_s=0.5)
    with ServerThread(app) as running:
        head = (b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 5000\r\n\r\n")
        status, headers, body = parse_raw(raw_exchange(running.url, head + b"\xff\xd8\xff"))
        assert status == 408 and headers["x-amzn-errortype"] == "ValidationError"
        assert "did not arrive within 0.5 s" in json.loads(body)["message"]
        assert httpx.get(f"{running.url}/ping").status_code == 200


def test_a_request_is_answered_503_in_the_runtime_format_when_connections_run_out(model) -> None:
    gated = GatedModel(model)
    app = create_app(gated, name="full")
    with ServerThread(app, max_connections=4) as running, ThreadPoolExecutor(4) as pool:
        clients = [httpx.Client(base_url=running.url, timeout=60) for _ in range(4)]
        try:
            busy = [pool.submit(c.post, "/invocations", content=encode(patch(i)), headers=JPEG)
                    for i, c in enumerate(clients)]
            in_model = lambda: sum(len(p) for p in gated.passes)  # noqa: E731
            wait_for(lambda: app.state.batcher.waiting + in_model() >= 4,
                     what="four requests in progress")
            # /ping still answers; a client that sends nothing gets a 503 and is closed
            status, _, _ = parse_raw(raw_exchange(running.url, b"GET /ping HTTP/1.1\r\n"
                                                  b"Host: 127.0.0.1\r\n\r\n"))
            assert status == 200
            status, headers, body = parse_raw(raw_exchange(running.url, b""))
            assert status == 503 and headers["x-amzn-errortype"] == "ServiceUnavailable"
            assert "4 connections" in json.loads(body)["message"]
            gated.gate.set()
            assert [f.result(60).status_code for f in busy] == [200] * 4
        finally:
            gated.gate.set()
            for c in clients:
                c.close()
        assert httpx.get(f"{running.url}/ping").status_code == 200


def test_a_malformed_request_is_refused_in_the_runtime_format(server) -> None:
    status, headers, body = parse_raw(raw_exchange(server.url, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and headers["x-amzn-errortype"] == "ValidationError"
    assert json.loads(body)["message"]


# --- 4. DNS rebinding -----------------------------------------------------------------------


def test_a_foreign_host_header_is_refused_by_a_loopback_server(server, client) -> None:
    """A page whose name was rebound to 127.0.0.1 still sends its own name as the Host."""
    port = urlparse(server.url).port
    for path in ("/invocations", "/info", "/ping"):
        reply = client.post(path, content=encode(patch()),
                            headers={**JPEG, "Host": f"attacker.example:{port}"})
        assert "attacker.example" in refused(reply, 403, "AccessDeniedException")
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "localhost"):
        reply = client.post("/invocations", content=encode(patch()), headers={**JPEG, "Host": host})
        assert reply.status_code == 200


# --- 5. a request that finds the model idle starts at once ---------------------------------------


def test_a_slow_client_does_not_hold_back_the_next_batch(model) -> None:
    """A client still sending its body is not waited for, however long max_wait_ms is."""
    app = create_app(model, name="prompt", max_wait_ms=600_000)
    with ServerThread(app) as running:
        parsed = urlparse(running.url)
        with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as slow:
            slow.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n\xff\xd8")
            with httpx.Client(base_url=running.url, timeout=30) as http:
                reply = http.post("/invocations", content=encode(patch()), headers=JPEG)
                assert reply.status_code == 200


def test_every_connection_sends_without_nagles_delay(server, client) -> None:
    """The 48 ms of the single-client benchmark: the answer's body waited for a delayed ACK."""
    assert client.get("/ping").status_code == 200
    protocols = server._server.server_state.connections
    assert protocols
    for protocol in protocols:
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
