"""wrk against a running server, for the load tests: statuses and latency in a LoadResult.

A thin adapter over :func:`fastapi_dbpool.cli.wrk.run_wrk` (the package's one wrk
driver), keeping the figures the load tests assert on.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi_dbpool.cli import wrk
from fastapi_dbpool.cli.wrk import wrk_path

__all__ = ["LoadResult", "run_wrk", "wrk_path"]


@dataclass(frozen=True)
class LoadResult:
    """What wrk saw: requests, statuses, socket errors and latency (seconds)."""

    clients: int
    requests: int
    duration_s: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    p50_s: float
    p99_s: float
    max_s: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s

    def count(self, status: int) -> int:
        """Responses with *status*."""
        return self.statuses.get(status, 0)

    def summary(self) -> str:
        """One line for logs and reports."""
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        errors = ", ".join(f"{k}: {v}" for k, v in self.socket_errors.items() if v) or "none"
        return (
            f"{self.clients:>3} clients: {self.rps:8.1f} req/s, p50 {self.p50_s * 1000:7.1f} ms, "
            f"p99 {self.p99_s * 1000:7.1f} ms, max {self.max_s:6.2f} s, statuses {{{statuses}}}, "
            f"socket errors {errors}"
        )


def run_wrk(url: str, *, clients: int, seconds: int, threads: int = 2) -> LoadResult:
    """Load *url* with *clients* keep-alive connections for *seconds*; wait up to 30 s each."""
    result = wrk.run_wrk(url, connections=clients, duration=seconds, threads=threads, timeout=30)
    return LoadResult(
        clients=clients,
        requests=result.requests,
        duration_s=result.duration_s,
        statuses=result.statuses,
        socket_errors=result.socket_errors,
        p50_s=result.latency_s["p50"],
        p99_s=result.latency_s["p99"],
        max_s=result.latency_s["max"],
    )
