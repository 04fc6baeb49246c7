"""Headless Chromium driven over the DevTools protocol, for pages a test wants to load.

:func:`load_page` opens a URL in Debian's chromium (``--remote-debugging-pipe``: no port, no
extra package) and collects what the DevTools protocol reports while the page loads: console
messages, uncaught exceptions, log entries (a resource that failed to load is one) and every
request the page made. Then it evaluates a JavaScript expression in the page.
Protocol reference: https://chromedevtools.github.io/devtools-protocol/
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs

CHROMIUM = Path("/usr/bin/chromium")
MISSING = "needs Debian's chromium package (/usr/bin/chromium): apt-get install chromium"


@attrs.frozen
class PageLoad:
    """What loading a page showed: DevTools events and the value of the evaluated expression."""

    events: list[dict[str, Any]]
    value: Any

    def of(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in self.events if e.get("method") == method]

    @property
    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries, as text."""
        found = [" ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
                 for p in self.of("Runtime.consoleAPICalled") if p["type"] in ("error", "assert")]
        found += [p["exceptionDetails"].get("text", "") + " "
                  + str(p["exceptionDetails"].get("exception", {}).get("description", ""))
                  for p in self.of("Runtime.exceptionThrown")]
        found += [f"{p['entry']['text']} ({p['entry'].get('url', '')})"
                  for p in self.of("Log.entryAdded") if p["entry"]["level"] == "error"]
        return found

    @property
    def requested(self) -> list[str]:
        """The URL of every request the page made, itself included."""
        return [p["request"]["url"] for p in self.of("Network.requestWillBeSent")]


class _Pipe:
    def __init__(self, reader: int, writer: int) -> None:
        self.reader = os.fdopen(reader, "rb", buffering=0)
        self.writer = os.fdopen(writer, "wb", buffering=0)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = self.reader.read(1 << 16)
            if not chunk:
                raise EOFError("chromium closed the DevTools pipe")
            self.buffer += chunk
        message, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 60) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.writer.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline)
            if answer.get("id") == self.next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive(deadline))


def load_page(url: str, expression: str, *, timeout: float = 60) -> PageLoad:
    """Load ``url`` in headless Chromium, then evaluate ``expression`` (JSON-able result)."""
    to_browser, from_test = os.pipe()  # chromium reads the protocol on fd 3
    to_test, from_browser = os.pipe()  # and writes on fd 4

    def descriptors() -> None:
        os.dup2(to_browser, 3)
        os.dup2(from_browser, 4)

    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=descriptors,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        pipe = _Pipe(to_test, from_test)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget",
                                {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout)
            result = pipe.call("Runtime.evaluate", {"expression": expression,
                                                    "returnByValue": True}, session=session)
            pipe.call("Browser.close")
        finally:
            try:
                browser.wait(timeout=20)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()
            pipe.reader.close()
            pipe.writer.close()
    if "exceptionDetails" in result:
        raise RuntimeError(f"evaluating the expression failed: {result['exceptionDetails']}")
    return PageLoad(events=pipe.events, value=result["result"].get("value"))
