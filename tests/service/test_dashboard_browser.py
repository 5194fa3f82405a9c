"""The /pool dashboard in a real headless Chromium, against users_api in a real uvicorn.

The page is loaded while a load runs; the test reads the numbers the page displays and
checks that they move, that the charts are drawn, that nothing outside the server was
fetched and that the page raised no error. It saves a screenshot in its tmp dir.

To refresh the screenshot in the docs, run this test with a longer load:
``DASHBOARD_SCREENSHOT=docs/pool-dashboard.png DASHBOARD_LOAD_SECONDS=150
.venv/bin/pytest tests/service/test_dashboard_browser.py -k postgres``.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.background_load import background_load
from tests.browser import Page, chromium_binary, chromium_page
from tests.servers import USERS_API, uvicorn_server

pytestmark = pytest.mark.slow

LOAD_SECONDS = float(os.environ.get("DASHBOARD_LOAD_SECONDS", "8"))
SCREENSHOT_COPY = os.environ.get("DASHBOARD_SCREENSHOT")
TOKEN = "dashboard-test-token"

TILES = (
    "Object.fromEntries([...document.querySelectorAll('[data-pool=\"primary\"] [data-metric]')]"
    ".map(e => [e.dataset.metric, e.textContent]))"
)
# Pixels of the "connections in use" chart drawn in its line colour (#2563eb).
IN_USE_PIXELS = """(() => {
  const c = document.querySelector('[data-pool="primary"] [data-chart="connections"]');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] < 80 && d[i + 1] > 70 && d[i + 1] < 130 && d[i + 2] > 200) n++;
  }
  return n;
})()"""


NO_FIGURE = "\u2013"  # the en dash the page shows before it has a figure


def number(text: str) -> float | None:
    """A figure as the page shows it ("1,234", "0.52", or NO_FIGURE)."""
    cleaned = text.replace(",", "").strip()
    return None if cleaned in ("", NO_FIGURE) else float(cleaned)


def tiles(page: Page) -> dict[str, float | None]:
    return {key: number(value) for key, value in page.evaluate(TILES).items()}


def users_load(server_url: str, user_ids: list[int], started: float):
    """Requests that change rhythm over the run: calm, busy, calm, busy."""

    def work(client: httpx.Client) -> None:
        phase = ((time.monotonic() - started) / max(LOAD_SECONDS, 1)) * 4
        if int(phase) % 2 == 0:
            time.sleep(random.uniform(0.02, 0.12))
        choice = random.random()
        if choice < 0.6:
            response = client.get(f"{server_url}/users/{random.choice(user_ids)}")
        elif choice < 0.85:
            response = client.get(f"{server_url}/users", params={"limit": 100})
        else:
            email = f"load-{random.getrandbits(48):x}@example.com"
            response = client.post(f"{server_url}/users", json={"name": "Load", "email": email})
        # 503 is an honest answer of a saturated pool; anything else is a failure.
        assert response.status_code in (200, 201, 503), response.text

    return work


def test_dashboard_shows_the_pool_moving_under_load(
    backend: str, database_url: str, tmp_path: Path
) -> None:
    chromium_binary()  # skip early, before starting a server, when chromium is absent
    env = {
        "DATABASE_URL": database_url,
        "DB_POOL_SIZE": "3",
        "DB_MAX_OVERFLOW": "1",
        "DB_POOL_TIMEOUT": "10",
        "DB_METRICS_TOKEN": TOKEN,
    }
    with uvicorn_server(USERS_API, env, log_path=tmp_path / "server.log") as server:
        user_ids = []
        with httpx.Client(base_url=server.url) as client:
            for i in range(20):
                body = {"name": f"User {i}", "email": f"user{i}@example.com"}
                user_ids.append(client.post("/users", json=body).json()["id"])

        with chromium_page() as page:
            for domain in ("Network", "Runtime", "Log", "Page"):
                page.send(f"{domain}.enable")
            page.send(
                "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Bearer {TOKEN}"}}
            )
            page.send("Page.navigate", {"url": server.url + "/pool"})
            page.wait_for("Number(document.body.dataset.updates) >= 1")
            before = tiles(page)
            assert before["capacity"] == 4 and before["max_overflow"] == 1

            in_use_seen: list[float] = []
            started = time.monotonic()
            with background_load(users_load(server.url, user_ids, started), clients=16) as done:
                while time.monotonic() - started < LOAD_SECONDS:
                    in_use_seen.append(tiles(page)["checked_out"] or 0)
                    time.sleep(0.25)
                during = tiles(page)
                updates = int(page.evaluate("document.body.dataset.updates"))
                drawn = page.evaluate(IN_USE_PIXELS)
                shot = page.screenshot(tmp_path / "pool-dashboard.png")
                requests_done = done()

            page.wait_for(f"{TILES}.checked_out === '0'", timeout=10)
            page.pump()

        assert requests_done > 50, "the load did not run"
        assert during["checkouts_total"] > before["checkouts_total"], (before, during)
        assert max(in_use_seen) > 0, "the page never showed a connection in use"
        assert during["hold_ms"] is not None and during["hold_ms"] > 0
        assert during["checkouts_rate"] is not None and during["checkouts_rate"] > 0
        assert updates >= LOAD_SECONDS - 3, f"only {updates} refreshes in {LOAD_SECONDS} s"
        assert drawn > 100, f"the in-use chart has {drawn} pixels of its line colour"

        requested = [
            event["params"]["request"]["url"]
            for event in page.events
            if event["method"] == "Network.requestWillBeSent"
        ]
        assert any(url.endswith("/pool/dashboard.js") for url in requested)
        foreign = [url for url in requested if not url.startswith(server.url + "/")]
        assert not foreign, f"the page fetched from elsewhere: {foreign}"
        errors = [
            event
            for event in page.events
            if event["method"] == "Runtime.exceptionThrown"
            or (
                event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error"
            )
            or (
                event["method"] == "Runtime.consoleAPICalled"
                and event["params"]["type"] in ("error", "assert")
            )
        ]
        assert not errors, errors

        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if SCREENSHOT_COPY:
            shutil.copyfile(shot, SCREENSHOT_COPY)
        assert "Traceback" not in server.log()
