"""Run wrk against one benchmarked endpoint and read its numbers."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from fastapi_dbpool.cli import wrk

from .system import LOAD_CPU, pinned, raise_fd_limit


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as the tables name it, and the wrk script mode that requests it."""

    key: str
    label: str
    mode: str


ENDPOINTS = {
    e.key: e
    for e in (
        Endpoint("get_user", "GET /users/{id}", "get_user"),
        Endpoint("post_user", "POST /users", "post_user"),
        Endpoint("list_items", "GET /items?owner_id=", "list_items"),
        Endpoint("process_item", "POST /items/{id}/process", "process_item"),
    )
}
# Sync ``def`` endpoints: users_api's against the tutorial's get_db() shape (bench.apps.
# tutorial_sync); measured in a suite of their own, not by every app.
SYNC_ENDPOINT = Endpoint("get_user_sync", "GET /users/{id}/sync", "get_user_sync")
ALL_ENDPOINTS = {**ENDPOINTS, SYNC_ENDPOINT.key: SYNC_ENDPOINT}


@dataclass
class Sample:
    """One wrk run: throughput, latency in milliseconds, and every kind of error."""

    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    requests: int
    errors: int
    non_2xx: int
    socket_errors: int
    seconds: float
    load_average: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def run_wrk(
    base_url: str,
    mode: str,
    *,
    seconds: float,
    connections: int,
    max_id: int,
    first_id: int = 1,
) -> Sample:
    """Load *base_url* for *seconds* with *connections* open connections, one wrk thread.

    Through the package's one wrk driver (fastapi_dbpool/cli/wrk.lua), pinned to the
    load CPU, with the open-file limit raised for many connections.
    """
    load = os.getloadavg()[0]
    try:
        result = wrk.run_wrk(
            base_url,
            connections=connections,
            duration=seconds,
            args=[f"mode={mode}", f"max_id={max_id}", f"first_id={first_id}"],
            prefix=pinned(LOAD_CPU, []),
            preexec_fn=raise_fd_limit,
        )
    except wrk.WrkError as error:
        raise RuntimeError(str(error)) from None
    sockets = sum(result.socket_errors.values())
    latency_ms = {k: v * 1000 for k, v in result.latency_s.items()}
    return Sample(
        rps=result.rps,
        p50_ms=latency_ms["p50"],
        p90_ms=latency_ms["p90"],
        p99_ms=latency_ms["p99"],
        max_ms=latency_ms["max"],
        requests=result.requests,
        errors=result.status_errors + sockets,
        non_2xx=result.status_errors,
        socket_errors=sockets,
        seconds=result.duration_s,
        load_average=load,
    )
