"""wrk against a running server, for load tests and bench scripts: statuses and latency.

The Lua script counts responses by status in every thread, which wrk alone does not
report; the figures come back as one JSON line we parse into a :class:`LoadResult`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

# Counts statuses per thread and prints one JSON line at the end.
_WRK_SCRIPT = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, '
    .. '"latency_us": {"p50": %d, "p99": %d, "max": %d}, "statuses": {%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, table.concat(parts, ", ")))
end
"""


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


def wrk_path() -> str | None:
    """The wrk binary, or None when it is not installed."""
    return shutil.which("wrk")


def run_wrk(url: str, *, clients: int, seconds: int, threads: int = 2) -> LoadResult:
    """Load *url* with *clients* keep-alive connections for *seconds*; wait up to 30 s each."""
    binary = wrk_path()
    assert binary is not None, "wrk is not installed"
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_SCRIPT)
        script.flush()
        command = [binary, f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--timeout", "30s"]
        result = subprocess.run(
            [*command, "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        )
    line = next(x for x in result.stdout.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    latency = data["latency_us"]
    return LoadResult(
        clients=clients,
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        statuses={int(k): v for k, v in data["statuses"].items()},
        socket_errors=data["errors"],
        p50_s=latency["p50"] / 1e6,
        p99_s=latency["p99"] / 1e6,
        max_s=latency["max"] / 1e6,
    )
