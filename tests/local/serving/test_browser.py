"""The endpoint's web page in headless Chromium: it shows the prediction of a patch.

The page is given a patch through ``?image=<data: URL>``, the way a link can hand it one; it
draws the patch, sends it to ``/invocations`` and shows the class and a confidence bar. The
DOM Chromium dumps and the pixels of its screenshot are checked against the server's own
answer for the same bytes.
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from _endpoint import encode, make_archive, patch
from PIL import Image

from pcamflow.local.model.archive import load_model_archive
from pcamflow.local.serving.app import create_app
from pcamflow.local.serving.hosting import ServerThread

CHROMIUM = Path("/usr/bin/chromium")
TUMOUR = (214, 39, 40)  # the bar's colours in static/style.css
NORMAL = (44, 160, 44)
OUTLINE = (255, 212, 0)  # the centre square's outline in static/app.js
BAR_INNER_WIDTH = 298  # 300 px wide, 1 px border each side

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium package (/usr/bin/chromium): apt-get install chromium",
    ),
]


def chromium(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}",
                "--virtual-time-budget=15000", "--window-size=800,600", "--hide-scrollbars",
                *extra, url,
            ],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    model = load_model_archive(make_archive(tmp_path_factory.mktemp("model") / "model.tar.gz"))
    with ServerThread(create_app(model, name="browser-test")) as running:
        yield running


def test_the_page_shows_the_prediction_of_a_patch(server, tmp_path) -> None:
    body = encode(patch(4), "PNG")
    answer = httpx.post(
        f"{server.url}/invocations", content=body, headers={"Content-Type": "image/png"}
    ).json()
    best = int(np.argmax(answer))
    confidence = answer[best]
    page = f"{server.url}/?image=" + quote(
        "data:image/png;base64," + base64.b64encode(body).decode(), safe=""
    )

    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-state="done"' in html, html[-3000:]
    assert f"(class {best})" in html
    assert f"confidence: {confidence * 100:.1f} %" in html
    assert "endpoint: browser-test" in html

    shot = tmp_path / "page.png"
    run = chromium(page, f"--screenshot={shot}")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    colour = TUMOUR if best == 1 else NORMAL
    other = NORMAL if best == 1 else TUMOUR
    bar = np.all(pixels == colour, axis=-1)
    assert bar.any(), "no confidence bar in the screenshot"
    assert not np.all(pixels == other, axis=-1).any()
    widest = bar.sum(axis=1).max()  # the bar's filled width, in pixels
    assert abs(widest - confidence * BAR_INNER_WIDTH) <= 2
    outline = np.all(np.abs(pixels - OUTLINE) <= 24, axis=-1)
    rows, cols = np.nonzero(outline)
    assert rows.size > 100, "no outline of the centre square"
    # a square a third of the drawn 288 px patch: 96 px on a side
    assert abs((rows.max() - rows.min()) - 96) <= 4
    assert abs((cols.max() - cols.min()) - 96) <= 4


def test_the_page_shows_the_servers_error(server) -> None:
    page = f"{server.url}/?image=" + quote("data:image/png;base64," + "bm90IGFuIGltYWdl", safe="")
    dom = chromium(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-state="error"' in dom.stdout
    assert "ValidationError" in dom.stdout
