"""Run wrk against one endpoint and read its numbers."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .system import LOAD_CPU, pinned, raise_fd_limit

SCRIPT = Path(__file__).resolve().parent / "wrk" / "requests.lua"


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
    """Load *base_url* for *seconds* with *connections* open connections, one wrk thread."""
    argv = pinned(
        LOAD_CPU,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(seconds, 1):g}s",
            "--timeout",
            "10s",
            "-s",
            str(SCRIPT),
            base_url,
            "--",
            mode,
            str(max_id),
            str(first_id),
        ],
    )
    load = os.getloadavg()[0]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        preexec_fn=raise_fd_limit,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    elapsed = raw["duration_us"] / 1e6
    sockets = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    return Sample(
        rps=raw["requests"] / elapsed if elapsed else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        requests=raw["requests"],
        errors=raw["status"] + sockets,
        non_2xx=raw["status"],
        socket_errors=sockets,
        seconds=elapsed,
        load_average=load,
    )
