"""Run ``dbpool bench`` through wrk when it is installed and asked for (``--wrk``).

wrk is faster than any Python client, so it measures the app rather than the load
generator. A generated Lua script sets the method, body and headers, counts responses
by status in every thread, and prints one JSON line that we parse into the same summary
as :meth:`fastapi_dbpool.cli.loadgen.LoadResult.as_dict`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .loadgen import Target

__all__ = ["WrkError", "run_wrk", "wrk_path"]

MARKER = "DBPOOL-JSON "

_SCRIPT = """
wrk.method = %(method)s
wrk.body = %(body)s
%(headers)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      parts[status] = (parts[status] or 0) + n
    end
  end
  local statuses = {}
  for status, n in pairs(parts) do
    table.insert(statuses, string.format('"%%d": %%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    '%(marker)s{"requests": %%d, "duration_us": %%d, "p50": %%d, "p90": %%d, "p99": %%d,'
    .. ' "max": %%d, "connect": %%d, "read": %%d, "write": %%d, "timeout": %%d,'
    .. ' "statuses": {%%s}}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.timeout,
    table.concat(statuses, ", ")))
end
"""


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed nothing we understand."""


def wrk_path() -> str | None:
    """Where wrk is installed, or None."""
    return shutil.which("wrk")


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal


def _script(target: Target) -> str:
    headers = [("Content-Type", "application/json")] if target.body else []
    headers += list(target.headers)
    return _SCRIPT % {
        "method": _lua_string(target.method),
        "body": _lua_string(target.body.decode()) if target.body else "nil",
        "headers": "\n".join(
            f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers
        ),
        "marker": MARKER,
    }


async def run_wrk(target: Target, *, concurrency: int, duration: float) -> dict[str, Any]:
    """Run wrk with one thread and *concurrency* connections; return the summary.

    Raises:
        WrkError: wrk is not installed, exited with an error, or its output lacks the summary.
    """
    executable = wrk_path()
    if executable is None:
        raise WrkError("wrk is not installed (apt-get install wrk); run without --wrk")
    with tempfile.TemporaryDirectory(prefix="dbpool-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(_script(target))
        process = await asyncio.create_subprocess_exec(
            executable,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            target.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    text = output.decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    if process.returncode != 0 or line is None:
        raise WrkError(f"wrk failed: {text.strip()[-500:]}")
    raw = json.loads(line.removeprefix(MARKER))
    return _summary(target, concurrency, raw)


def _summary(target: Target, concurrency: int, raw: dict[str, Any]) -> dict[str, Any]:
    statuses = {str(k): int(v) for k, v in sorted(raw["statuses"].items(), key=lambda kv: kv[0])}
    failures = {
        f"{kind}: wrk": int(raw[kind])
        for kind in ("connect", "read", "write", "timeout")
        if raw[kind]
    }
    responses = sum(statuses.values())
    duration_s = raw["duration_us"] / 1e6
    bad = sum(n for status, n in statuses.items() if not 200 <= int(status) < 400)
    return {
        "url": target.url,
        "method": target.method,
        "concurrency": concurrency,
        "duration_s": round(duration_s, 3),
        "requests": responses + sum(failures.values()),
        "responses": responses,
        "requests_per_second": round(responses / duration_s, 1) if duration_s else 0.0,
        "latency_ms": {k: raw[k] / 1000 for k in ("p50", "p90", "p99", "max")},
        "statuses": statuses,
        "failures": failures,
        "errors": bad + sum(failures.values()),
        "engine": "wrk",
    }
