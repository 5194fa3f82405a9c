"""Run wrk with the package's one Lua driver (``wrk.lua``) and read what it saw.

wrk is faster than any Python client, so it measures the app rather than the load
generator. ``wrk.lua`` shapes the requests from its script arguments (a fixed request
for ``dbpool bench --wrk``; the benchmark's endpoints ``get_user``, ``list_items``,
``post_user``, ``process_item``), counts responses by status in every thread and
prints one JSON line, which :func:`run_wrk` parses into a :class:`WrkResult`. The same
runner serves ``dbpool bench --wrk``, the load tests (tests/wrk.py) and the benchmark
(bench/loadgen.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from .loadgen import Target

__all__ = [
    "WrkError",
    "WrkResult",
    "bench_summary",
    "fixed_request",
    "run_wrk",
    "wrk_path",
]

MARKER = "DBPOOL_WRK "
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
MODES = ("fixed", "get_user", "list_items", "post_user", "process_item")


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed nothing we understand."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run. Times in seconds.

    ``requests`` counts completed requests, as wrk does; ``statuses`` counts them by
    status; ``socket_errors`` counts those that failed (connect, read, write, timeout);
    ``status_errors`` is wrk's own count of answers with a status of 400 or more.
    """

    url: str
    threads: int
    connections: int
    requests: int
    duration_s: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    status_errors: int
    latency_s: dict[str, float]

    @property
    def responses(self) -> int:
        """Requests answered with a status, whatever it was."""
        return sum(self.statuses.values())

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s else 0.0


def wrk_path() -> str | None:
    """Where wrk is installed, or None."""
    return shutil.which("wrk")


def fixed_request(
    method: str = "GET", body: str = "", headers: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """Script arguments for one request repeated unchanged (the URL gives path and query)."""
    args = ["mode=fixed", f"method={method}"]
    if body:
        args.append(f"body={body}")
    args += [f"header={name}: {value}" for name, value in headers]
    return args


def run_wrk(
    url: str,
    *,
    connections: int,
    duration: float,
    threads: int = 1,
    timeout: int = 10,
    args: Sequence[str] = (),
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], Any] | None = None,
) -> WrkResult:
    """Load *url* with wrk and ``wrk.lua``; return what it saw.

    Args:
        url: The target; with ``mode=fixed`` its path and query are requested.
        connections: Keep-alive connections, shared by the threads.
        duration: Seconds of load, rounded to whole seconds (at least 1; wrk takes no
            fractions).
        threads: wrk threads.
        timeout: Seconds a request may take before wrk counts it as a timeout.
        args: Script arguments (``key=value``) shaping the request, see ``wrk.lua``;
            :func:`fixed_request` builds them for a fixed request.
        prefix: Command words run before wrk (``taskset -c 1`` to pin it).
        preexec_fn: Run in the child before wrk starts (to raise its file limit).

    Raises:
        WrkError: wrk is not installed, exited with an error, or printed no summary.
    """
    executable = wrk_path()
    if executable is None:
        raise WrkError("wrk is not installed (apt-get install wrk)")
    seconds = max(1, round(duration))
    with resources.as_file(resources.files("fastapi_dbpool.cli").joinpath("wrk.lua")) as script:
        command = [
            *prefix,
            executable,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            f"{timeout}s",
            "-s",
            str(script),
            url,
            "--",
            *args,
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=seconds + timeout + 60,
                check=False,
                preexec_fn=preexec_fn,
            )
        except subprocess.TimeoutExpired:
            raise WrkError(f"wrk did not finish within {seconds + timeout + 60} s") from None
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        output = (done.stderr + done.stdout).strip()[-500:]
        raise WrkError(f"wrk failed (exit {done.returncode}): {output}")
    return _parse(line.removeprefix(MARKER), url, threads, connections)


def _parse(line: str, url: str, threads: int, connections: int) -> WrkResult:
    raw = json.loads(line)
    errors = raw["errors"]
    return WrkResult(
        url=url,
        threads=threads,
        connections=connections,
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        statuses={int(k): int(v) for k, v in sorted(raw["statuses"].items())},
        socket_errors={kind: int(errors[kind]) for kind in SOCKET_ERRORS},
        status_errors=int(errors["status"]),
        latency_s={k: v / 1e6 for k, v in raw["latency_us"].items()},
    )


def bench_summary(target: Target, result: WrkResult) -> dict[str, Any]:
    """*result* in the shape of :meth:`~fastapi_dbpool.cli.loadgen.LoadResult.as_dict`."""
    statuses = {str(status): n for status, n in sorted(result.statuses.items())}
    failures = {f"{kind}: wrk": n for kind, n in result.socket_errors.items() if n}
    responses = result.responses
    bad = sum(n for status, n in result.statuses.items() if not 200 <= status < 400)
    return {
        "url": target.url,
        "method": target.method,
        "concurrency": result.connections,
        "duration_s": round(result.duration_s, 3),
        "requests": responses + sum(failures.values()),
        "responses": responses,
        "requests_per_second": (
            round(responses / result.duration_s, 1) if result.duration_s else 0.0
        ),
        "latency_ms": {k: result.latency_s[k] * 1000 for k in ("p50", "p90", "p99", "max")},
        "statuses": statuses,
        "failures": failures,
        "errors": bad + sum(failures.values()),
        "engine": "wrk",
    }
