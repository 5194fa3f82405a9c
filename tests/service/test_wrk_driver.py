"""The wrk driver (fastapi_dbpool/cli/wrk.lua): the requests each mode sends, statuses counted.

wrk loads a small recording HTTP server on 127.0.0.1, which answers by a rule the test
knows; the test compares what the server received with what the driver reported.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fastapi_dbpool.cli.wrk import WrkError, WrkResult, fixed_request, run_wrk
from tests.backends import REQUIRE_SYSTEM_DEPS, skip_or_fail

pytestmark = pytest.mark.slow

CONNECTIONS = 4


class Recorder(ThreadingHTTPServer):
    """Answers 404 to paths whose last number is odd, 200 (GET) or 201 (POST) otherwise."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, dict[str, str], bytes, int]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def answer(self, method: str, path: str) -> int:
        numbers = re.findall(r"\d+", path)
        if numbers and int(numbers[-1]) % 2:
            return 404
        return 201 if method == "POST" else 200


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as wrk expects
    server: Recorder

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status = self.server.answer(self.command, self.path)
        with self.server.lock:
            self.server.seen.append((self.command, self.path, dict(self.headers), body, status))
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _serve

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Recorder]:
    if shutil.which("wrk") is None:
        skip_or_fail("wrk is not installed (apt-get install wrk)", required=REQUIRE_SYSTEM_DEPS)
    recorder = Recorder()
    thread = threading.Thread(target=recorder.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder.shutdown()
        recorder.server_close()
        thread.join(timeout=5)


def run(server: Recorder, path: str = "/", *args: str) -> WrkResult:
    return run_wrk(server.url + path, connections=CONNECTIONS, duration=1, threads=2, args=args)


def assert_counted(server: Recorder, result: WrkResult) -> None:
    """The driver's status counts are the server's answers (less those still in flight)."""
    answered = Counter(status for *_, status in server.seen)
    assert result.responses == result.requests > 10
    assert not any(result.socket_errors.values())
    for status, n in answered.items():
        # At the end, up to one answer per connection is written but not read.
        assert n - CONNECTIONS <= result.statuses.get(status, 0) <= n, (status, result.statuses)
    assert set(result.statuses) <= set(answered)
    assert result.status_errors == result.statuses.get(404, 0)


def test_fixed_request(server: Recorder) -> None:
    args = fixed_request("POST", '{"a": 2}', [("X-Test", "one two")])
    result = run(server, "/things?page=2", *args)
    assert_counted(server, result)
    assert set(result.statuses) == {201}
    for method, path, headers, body, _ in server.seen:
        assert (method, path, body) == ("POST", "/things?page=2", b'{"a": 2}')
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Test"] == "one two"
    latency = result.latency_s
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]


def test_fixed_request_keeps_a_given_content_type(server: Recorder) -> None:
    run(server, "/", *fixed_request("POST", "x=1", [("content-type", "text/plain")]))
    assert {headers["content-type"] for _, _, headers, _, _ in server.seen} == {"text/plain"}


def test_get_user_and_list_items_ask_for_random_ids(server: Recorder) -> None:
    result = run(server, "/", "mode=get_user", "max_id=20")
    ids = [int(path.removeprefix("/users/")) for _, path, *_ in server.seen]
    assert {method for method, *_ in server.seen} == {"GET"}
    assert set(ids) <= set(range(1, 21)) and len(set(ids)) > 10
    assert_counted(server, result)
    assert set(result.statuses) == {200, 404}

    server.seen.clear()
    run(server, "/", "mode=list_items", "max_id=5")
    owners = {path for _, path, *_ in server.seen}
    assert owners == {f"/items?owner_id={n}" for n in range(1, 6)}


def test_post_user_sends_a_unique_email_each_time(server: Recorder) -> None:
    result = run(server, "/", "mode=post_user")
    emails = [json.loads(body)["email"] for _, _, _, body, _ in server.seen]
    assert {path for _, path, *_ in server.seen} == {"/users"}
    assert len(set(emails)) == len(emails) > 10
    assert_counted(server, result)


def test_process_item_takes_ids_in_turn_and_wraps(server: Recorder) -> None:
    result = run(server, "/", "mode=process_item", "first_id=3", "max_id=9")
    ids = [int(path.split("/")[2]) for _, path, *_ in server.seen]
    assert {path.split("/")[3] for _, path, *_ in server.seen} == {"process"}
    assert set(ids) == set(range(1, 10))  # from 3 up to 9, then 1 again
    assert_counted(server, result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["mode=nope"], "unknown mode 'nope'"),
        (["oops"], "argument 'oops' is not key=value"),
        (["header=no colon"], "header 'no colon' is not 'Name: value'"),
        (["mode=get_user", "max_id=many"], "max_id is not a number"),
    ],
)
def test_bad_script_arguments_fail_naming_them(
    server: Recorder, args: list[str], message: str
) -> None:
    with pytest.raises(WrkError, match=re.escape(message)):
        run(server, "/", *args)
