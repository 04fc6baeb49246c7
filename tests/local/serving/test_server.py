"""The local endpoint over real HTTP: routes, headers, answers, batch form, micro-batching."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from _endpoint import decoded, encode, make_archive, npy, patch

from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.app import create_app
from pcamflow.local.serving.batching import MicroBatcher
from pcamflow.local.serving.hosting import ServerThread

JPEG = {"Content-Type": "image/jpeg"}
NPY = {"Content-Type": "application/x-npy"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    return load_model_archive(make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz"))


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(create_app(model, name="pcam-test")) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def expected(model, images: list[np.ndarray]) -> np.ndarray:
    """The in-process answer for decoded images."""
    return model.predict_images(np.stack(images))


def test_ping_answers_once_the_model_is_loaded(client) -> None:
    reply = client.get("/ping")
    assert reply.status_code == 200


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("JPEG", "application/x-image")],
)
def test_one_image_gets_a_list_of_class_probabilities(model, client, fmt, content_type) -> None:
    body = encode(patch(1), fmt)
    reply = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    answer = reply.json()
    assert len(answer) == 2 and abs(sum(answer) - 1) < 1e-6
    np.testing.assert_allclose(answer, expected(model, [decoded(body)])[0], rtol=1e-5, atol=1e-6)


def test_the_runtime_api_route_has_its_headers(model, client) -> None:
    body = encode(patch(2))
    reply = client.post(
        "/endpoints/pcam-test/invocations",
        content=body,
        headers={
            "Content-Type": "image/jpeg",
            "Accept": "application/json",
            "X-Amzn-SageMaker-Custom-Attributes": "trace=abc-123",
        },
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
    assert reply.headers["x-amzn-sagemaker-custom-attributes"] == "trace=abc-123"
    np.testing.assert_allclose(reply.json(), expected(model, [decoded(body)])[0], rtol=1e-5)


def test_another_endpoint_name_is_not_found(client) -> None:
    reply = client.post(
        "/endpoints/other/invocations", content=encode(patch()), headers=JPEG
    )
    assert reply.status_code == 400
    assert reply.headers["x-amzn-errortype"] == "ValidationError"
    assert "other" in reply.json()["message"]


def test_the_batch_form_answers_a_list_of_lists(model, client) -> None:
    images = np.stack([patch(seed) for seed in range(5)])
    reply = client.post("/invocations", content=npy(images), headers=NPY)
    assert reply.status_code == 200, reply.text
    answer = np.array(reply.json())
    assert answer.shape == (5, 2)
    np.testing.assert_allclose(answer, expected(model, list(images)), rtol=1e-5, atol=1e-6)
    one = client.post("/invocations", content=npy(images[0]), headers=NPY)
    np.testing.assert_allclose(one.json(), answer[:1], rtol=1e-5, atol=1e-6)


def test_a_fortran_order_npy_gets_the_answer_of_its_c_order_twin(model, client) -> None:
    images = np.stack([patch(seed) for seed in range(3)])
    fortran = np.asfortranarray(images)
    assert npy(fortran) != npy(images)  # the header says fortran_order, the bytes differ
    reply = client.post("/invocations", content=npy(fortran), headers=NPY)
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json(), expected(model, list(images)), rtol=1e-5, atol=1e-6)


def test_a_grey_model_is_sent_the_luma_of_each_image(tmp_path) -> None:
    """A model trained on grey images (image_shape 1,96,96) answers for Pillow's "L" image:
    ITU-R 601-2 luma, L = R * 299/1000 + G * 587/1000 + B * 114/1000."""
    from PIL import Image

    grey = load_model_archive(make_archive(tmp_path / "grey.tar.gz", channels=1))
    body = encode(patch(4), "PNG")
    luma = np.asarray(Image.fromarray(patch(4)).convert("L"))[None, ..., None]
    with ServerThread(create_app(grey, name="grey")) as running, \
            httpx.Client(base_url=running.url, timeout=30) as http:
        one = http.post("/invocations", content=body, headers={"Content-Type": "image/png"})
        batch = http.post("/invocations", content=npy(np.stack([patch(4), patch(5)])),
                          headers=NPY)
    assert one.status_code == 200, one.text
    want = grey.predict_images(luma)[0]
    np.testing.assert_allclose(one.json(), want, rtol=1e-4, atol=1e-5)
    assert batch.status_code == 200, batch.text
    np.testing.assert_allclose(batch.json()[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("JPEG", "image/png"), ("PNG", "image/jpeg"), ("PNG", "application/x-image")],
    ids=["jpeg-as-png", "png-as-jpeg", "png-as-x-image"],
)
def test_jpeg_and_png_are_taken_under_any_of_the_image_types(model, client, fmt,
                                                              content_type) -> None:
    """The algorithm supports .jpg and .png "as image/png, image/jpeg, and application/x-image
    content-type" (AWS, "Image Classification - MXNet", Inference)."""
    body = encode(patch(3), fmt)
    reply = client.post("/invocations", content=body, headers={"Content-Type": content_type})
    assert reply.status_code == 200, reply.text
    np.testing.assert_allclose(reply.json(), expected(model, [decoded(body)])[0], rtol=1e-5,
                               atol=1e-6)


def test_accept_jsonlines_answers_one_prediction_record_per_image(model, client) -> None:
    body = encode(patch(4))
    one = client.post("/invocations", content=body,
                      headers={**JPEG, "Accept": "application/jsonlines"})
    assert one.status_code == 200, one.text
    assert one.headers["content-type"] == "application/jsonlines"
    assert one.text.endswith("\n") and one.text.count("\n") == 1
    record = json.loads(one.text)
    np.testing.assert_allclose(record["prediction"], expected(model, [decoded(body)])[0],
                               rtol=1e-5, atol=1e-6)
    images = np.stack([patch(seed) for seed in range(3)])
    batch = client.post("/invocations", content=npy(images),
                        headers={**NPY, "Accept": "application/jsonlines"})
    rows = [json.loads(line)["prediction"] for line in batch.text.splitlines()]
    np.testing.assert_allclose(rows, expected(model, list(images)), rtol=1e-5, atol=1e-6)


def test_an_accept_other_than_json_is_refused(client) -> None:
    reply = client.post(
        "/invocations",
        content=encode(patch()),
        headers={"Content-Type": "image/jpeg", "Accept": "text/csv"},
    )
    assert reply.status_code == 400
    assert reply.headers["x-amzn-errortype"] == "ValidationError"


def test_an_unknown_route_answers_in_the_runtime_error_format(client) -> None:
    reply = client.get("/nowhere")
    assert reply.status_code == 404
    assert reply.headers["x-amzn-errortype"] == "UnknownOperationException"
    assert "message" in reply.json()


def test_info_describes_the_model(client) -> None:
    info = client.get("/info").json()
    assert info["name"] == "pcam-test"
    assert info["architecture"] == "resnet20"
    assert info["classes"] == ["0", "1"]


def test_concurrent_requests_share_forward_passes(model) -> None:
    """16 requests arriving while a forward pass runs are answered together in the next one."""
    gate = threading.Event()
    sizes: list[int] = []

    class Gated:
        meta = model.meta

        def preprocess(self, images):
            return model.preprocess(images)

        def predict_proba(self, batch):
            sizes.append(len(batch))
            gate.wait(30)  # the first batch waits until all the other requests have queued
            return model.predict_proba(batch)

    app = create_app(Gated(), name="gated", max_batch_size=32, max_wait_ms=0)
    bodies = [encode(patch(seed)) for seed in range(16)]
    with ServerThread(app) as running, httpx.Client(base_url=running.url, timeout=60) as http:

        def send(body: bytes) -> list[float]:
            reply = http.post("/invocations", content=body, headers={"Content-Type": "image/jpeg"})
            assert reply.status_code == 200, reply.text
            return reply.json()

        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(send, body) for body in bodies]
            batcher = app.state.batcher
            for _ in range(3000):
                if sizes and batcher.waiting + sizes[0] >= 16:
                    break
                threading.Event().wait(0.01)
            gate.set()
            answers = [f.result() for f in futures]
        info = http.get("/info").json()["batches"]
    assert sum(sizes) == 16 and len(sizes) == 2  # two forward passes for 16 requests
    assert info == {"count": 2, "images": 16, "largest": max(sizes), "mean": 8.0,
                    "abandoned": 0, "dropped": 0}
    want = expected(model, [decoded(b) for b in bodies])
    np.testing.assert_allclose(np.array(answers), want, rtol=1e-4, atol=1e-5)


# --- the batcher on its own ------------------------------------------------------------------


def _recording_batcher(sizes: list[int], **kwargs) -> MicroBatcher:
    def predict(images):
        sizes.append(len(images))
        return np.array([[float(i.flat[0]), 1.0] for i in images])

    return MicroBatcher(predict, **kwargs)


def _images(count: int, start: int = 0) -> list[np.ndarray]:
    return [np.full((2, 2, 3), start + i, np.uint8) for i in range(count)]


def test_queued_requests_go_in_one_batch_bounded_by_max_batch_size() -> None:
    sizes: list[int] = []

    async def main():
        batcher = _recording_batcher(sizes, max_batch_size=4, max_wait_ms=0)
        try:
            return await asyncio.gather(*(batcher.submit(_images(1, i)) for i in range(10)))
        finally:
            await batcher.aclose()

    answers = asyncio.run(main())
    assert sizes == [4, 4, 2]
    assert [int(a[0, 0]) for a in answers] == list(range(10))  # each gets its own row


def test_a_request_larger_than_a_batch_is_sliced() -> None:
    sizes: list[int] = []

    async def main():
        batcher = _recording_batcher(sizes, max_batch_size=4, max_wait_ms=5.0)
        try:
            return await batcher.submit(_images(10))
        finally:
            await batcher.aclose()

    answer = asyncio.run(main())
    assert sizes == [4, 4, 2]
    assert answer[:, 0].tolist() == list(range(10))


def test_a_large_request_slices_no_more_per_pass_than_a_small_one_takes() -> None:
    sizes: list[int] = []

    async def main():
        batcher = _recording_batcher(sizes, max_batch_size=8, max_wait_ms=0)
        try:
            return await asyncio.gather(batcher.submit(_images(10)), batcher.submit(_images(1)),
                                        batcher.submit(_images(1, 50)))
        finally:
            await batcher.aclose()

    large, first, second = asyncio.run(main())
    assert sizes == [3, 8, 1]  # one image each while they share; then the large one alone
    assert large[:, 0].tolist() == list(range(10))
    assert first[:, 0].tolist() == [0] and second[:, 0].tolist() == [50]


def test_a_batch_waits_for_announced_requests_only() -> None:
    sizes: list[int] = []

    async def late(batcher: MicroBatcher):
        with batcher.expect() as ticket:
            await asyncio.sleep(0.05)  # still reading its body when the first one arrives
            return await batcher.submit(_images(1, 7), ticket)

    async def main():
        batcher = _recording_batcher(sizes, max_batch_size=8, max_wait_ms=2000)
        try:
            waiting = asyncio.ensure_future(late(batcher))
            await asyncio.sleep(0)
            first = await batcher.submit(_images(1))
            await waiting
            alone = await batcher.submit(_images(1))  # nothing announced: no wait
            return first, alone
        finally:
            await batcher.aclose()

    asyncio.run(main())
    assert sizes == [2, 1]


def test_a_failing_batch_fails_its_requests_and_the_next_batch_runs() -> None:
    calls = []

    def predict(images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.ones((len(images), 2))

    async def main():
        batcher = MicroBatcher(predict, max_batch_size=32, max_wait_ms=5.0)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(_images(1))
            return await batcher.submit(_images(2))
        finally:
            await batcher.aclose()

    assert asyncio.run(main()).shape == (2, 2)
    assert calls == [1, 2]


def test_the_page_is_served_whole_and_loads_nothing_from_elsewhere(client) -> None:
    for path in ("/", "/static/app.js", "/static/style.css"):
        reply = client.get(path)
        assert reply.status_code == 200
        assert "default-src 'self'" in reply.headers["content-security-policy"]
        assert "http://" not in reply.text and "https://" not in reply.text
    assert "/static/app.js" in client.get("/").text
    assert client.get("/static/other.js").status_code == 404
