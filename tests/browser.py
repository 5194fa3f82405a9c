"""A headless Chromium driven over the Chrome DevTools Protocol, for browser tests.

Launches Debian's ``chromium`` with a throwaway profile and talks to it through one
websocket (``websockets``' sync client): a page target is created and attached in
flat mode, so every command carries its ``sessionId``. Events are kept, in order, for
the test to inspect (network requests, console messages, exceptions).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.backends import REQUIRE_SYSTEM_DEPS, skip_or_fail

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]


def chromium_binary() -> str:
    """The path of chromium; skips the test (fails under REQUIRE_SYSTEM_DEPS=1) without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail(
            "chromium is not installed (apt-get install chromium)", required=REQUIRE_SYSTEM_DEPS
        )
    assert path is not None
    return path


class Page:
    """One browser tab, attached over CDP."""

    def __init__(self, socket: ClientConnection, session_id: str) -> None:
        self._socket = socket
        self._session = session_id
        self._ids = itertools.count(1000)
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, timeout: float = 30) -> Any:
        """Run one CDP command in this tab and return its result."""
        return _call(self._socket, self._ids, method, params, self._session, self.events, timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript *expression* in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 20) -> Any:
        """Poll *expression* until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        problem = "stayed falsy"
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except AssertionError as error:  # e.g. the page is still loading
                problem = str(error)
            else:
                if value:
                    return value
            time.sleep(0.1)
        raise AssertionError(f"{expression!r}: {problem} for {timeout} s")

    def pump(self) -> None:
        """Collect the events that arrived since the last command."""
        self.send("Runtime.evaluate", {"expression": "0"})

    def screenshot(self, path: Path) -> Path:
        """Save the whole page as a PNG at *path*."""
        # The page's content, not the empty viewport below it.
        width, height = self.evaluate(
            "[document.documentElement.scrollWidth,"
            " Math.ceil(document.body.getBoundingClientRect().bottom) + 16]"
        )
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _call(
    socket: ClientConnection,
    ids: Iterator[int],
    method: str,
    params: dict[str, Any] | None,
    session: str | None,
    events: list[dict[str, Any]],
    timeout: float,
) -> Any:
    message_id = next(ids)
    message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
    if session is not None:
        message["sessionId"] = session
    socket.send(json.dumps(message))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no answer to {method} within {timeout} s")
        answer = json.loads(socket.recv(timeout=left))
        if answer.get("id") == message_id:
            if "error" in answer:
                raise AssertionError(f"{method} failed: {answer['error']}")
            return answer.get("result", {})
        if "method" in answer:
            events.append(answer)


@contextmanager
def chromium_page(width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A fresh headless Chromium with one tab of *width* by *height* CSS pixels."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            endpoint = _devtools_endpoint(Path(profile), process)
            with connect(endpoint, max_size=64 * 2**20, open_timeout=20) as socket:
                ids = itertools.count(1)
                events: list[dict[str, Any]] = []
                target = _call(
                    socket, ids, "Target.createTarget", {"url": "about:blank"}, None, events, 30
                )
                attached = _call(
                    socket,
                    ids,
                    "Target.attachToTarget",
                    {"targetId": target["targetId"], "flatten": True},
                    None,
                    events,
                    30,
                )
                page = Page(socket, attached["sessionId"])
                page.send(
                    "Emulation.setDeviceMetricsOverride",
                    {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                )
                yield page
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _devtools_endpoint(profile: Path, process: subprocess.Popen[bytes], timeout: float = 30) -> str:
    # Chromium writes the port it chose, and the browser target's path, to this file.
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"chromium exited with {process.returncode} at start")
        if marker.exists():
            lines = marker.read_text().split()
            if len(lines) >= 2:
                return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    raise AssertionError(f"chromium did not open its DevTools port within {timeout} s")
