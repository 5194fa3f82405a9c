"""The bench's HTTP/1.1 response framing and target parsing, without a network."""

from __future__ import annotations

import pytest

from fastapi_dbpool.cli.loadgen import LoadResult, Target, TargetError, _parse_response


def parse(raw: bytes, *, eof: bool = False) -> tuple[int, int, bool] | None:
    return _parse_response(bytearray(raw), eof=eof)


def test_content_length_frames_the_body() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    assert parse(raw) == (200, len(raw), True)
    assert parse(raw[:-1]) is None  # body incomplete
    assert parse(raw[:20]) is None  # head incomplete
    # A following response stays in the buffer.
    assert parse(raw + b"HTTP/1.1 2") == (200, len(raw), True)


def test_chunked_body_ends_at_the_zero_chunk() -> None:
    raw = (
        b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"
    )
    assert parse(raw) == (404, len(raw), True)
    for cut in (len(raw) - 1, len(raw) - 3, len(raw) - 10):
        assert parse(raw[:cut]) is None
    trailers = raw[:-2] + b"x-trailer: 1\r\n\r\n"
    assert parse(trailers) == (404, len(trailers), True)


def test_connection_close_and_bodiless_statuses() -> None:
    closing = (
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno"
    )
    assert parse(closing) == (503, len(closing), False)
    no_content = b"HTTP/1.1 204 No Content\r\nserver: x\r\n\r\n"
    assert parse(no_content) == (204, len(no_content), True)
    until_eof = b"HTTP/1.0 200 OK\r\n\r\nsome body"
    assert parse(until_eof) is None
    assert parse(until_eof, eof=True) == (200, len(until_eof), False)


def test_garbage_is_refused() -> None:
    with pytest.raises(ValueError):
        parse(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_target_from_url() -> None:
    target = Target.from_url("http://127.0.0.1:8000/users/1?x=2")
    assert (target.host, target.port, target.path) == ("127.0.0.1", 8000, "/users/1?x=2")
    assert Target.from_url("http://h:1/a", path="b").path == "/b"
    assert Target.from_url("https://example.com").port == 443
    post = Target.from_url("http://h:1", path="/users", method="post", body=b'{"a": 1}')
    request = post.request_bytes()
    assert request.startswith(b"POST /users HTTP/1.1\r\nHost: h:1\r\n")
    assert b"Content-Type: application/json\r\nContent-Length: 8\r\n" in request
    assert request.endswith(b'\r\n\r\n{"a": 1}')
    for bad in ("ftp://h/x", "127.0.0.1:8000", "http://:80/", "http://h:99999/"):
        with pytest.raises(TargetError):
            Target.from_url(bad)


def test_percentiles_use_the_nearest_rank() -> None:
    result = LoadResult(Target.from_url("http://h:1"), concurrency=1)
    assert result.percentile(0.5) is None
    result.latencies_s.extend(float(i) for i in range(1, 101))
    assert result.percentile(0.50) == 50
    assert result.percentile(0.99) == 99
    assert result.percentile(1.0) == 100
    result.statuses.update({200: 90, 404: 10})
    result.failures["connect: refused"] = 2
    assert (result.requests, result.responses, result.errors) == (102, 100, 12)
