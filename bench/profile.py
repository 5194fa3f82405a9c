"""Profile users_api under load: ``python -m bench.profile [ENDPOINT] [--backend B]``.

Starts users_api on a fresh seeded database, loads one endpoint with wrk, and samples
the server with py-spy for the measured seconds. Writes the collapsed stacks to
bench/profiles/<endpoint>-<backend>.txt and prints the functions that hold the most
samples (inclusive), which is where NOTES.md takes its profiles from.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from . import database
from .harness import backend_database
from .loadgen import ENDPOINTS, run_wrk
from .servers import APPS, AppServer

OUT = Path(__file__).resolve().parent / "profiles"
RATE = 200  # py-spy samples per second


def summarise(collapsed: Path, top: int = 40) -> str:
    """The *top* frames by inclusive share of samples, from py-spy's collapsed output."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        for frame in set(stack.split(";")):
            inclusive[frame] += n
    rows = [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top)]
    return f"{total} samples\n" + "\n".join(rows)


# Layers of a request, each named by the file paths of its frames. A sample belongs to
# the innermost frame that matches a layer (the garbage collector shows as the frame
# that allocated when it ran, so it spreads over the others).
LAYERS = (
    ("fastapi_dbpool: leak detection", ("fastapi_dbpool/observe/leaks.py",)),
    ("fastapi_dbpool: metrics", ("fastapi_dbpool/observe/", "prometheus_client")),
    ("fastapi_dbpool: shutdown guard", ("fastapi_dbpool/request/shutdown.py",)),
    ("fastapi_dbpool: pool (permits, monitor, ping)", ("fastapi_dbpool/pool/",
                                                       "fastapi_dbpool/sqlite/")),
    ("SQLAlchemy pool and events", ("sqlalchemy/pool", "sqlalchemy/event",
                                    "sqlalchemy/util/queue")),
    ("greenlet hops", ("sqlalchemy/util/concurrency", "greenlet_spawn")),
    ("driver (asyncpg / aiosqlite)", ("asyncpg/", "aiosqlite/")),
    ("fastapi_dbpool: direct connection, dependency", ("fastapi_dbpool/request/",
                                                       "fastapi_dbpool/database.py",
                                                       "fastapi_dbpool/_compat.py")),
    ("SQLAlchemy ORM / engine / types", ("sqlalchemy/",)),
    ("email validation", ("email_validator", "idna")),
    ("pydantic", ("pydantic",)),
    ("FastAPI dependency solving", ("fastapi/dependencies",)),
    ("routing, endpoint, response", ("starlette/routing.py", "fastapi/routing.py",
                                     "starlette/responses.py", "users_api/", "bench/apps/")),
    ("middleware", ("middleware", "_body_limit", "_exception_handler", "fastapi/telemetry",
                    "fastapi/applications", "starlette/applications")),
    ("uvicorn, httptools", ("uvicorn/", "httptools")),
    ("asyncio, uvloop", ("asyncio/", "uvloop")),
)  # fmt: skip


def layers(collapsed: Path, requests: int, rate: int) -> str:
    """CPU microseconds per request spent in each of :data:`LAYERS` (event-loop thread)."""
    spent: Counter[str] = Counter()
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if frames[0].startswith("Thread._bootstrap"):
            continue  # aiosqlite's and the thread pool's threads
        layer = next(
            (
                name
                for frame in reversed(frames)
                for name, paths in LAYERS
                if any(path in frame for path in paths)
            ),
            "other (the event loop's C code, idle polling)",
        )
        spent[layer] += int(count)
    per_sample_us = 1e6 / rate
    total = sum(spent.values())
    rows = [
        f"{n * per_sample_us / requests:8.0f} us  {n / total:6.1%}  {name}"
        for name, n in spent.most_common()
    ]
    head = f"{total * per_sample_us / requests:8.0f} us per request on the event-loop thread"
    return head + "\n" + "\n".join(rows)


def _py_spy() -> str:
    """py-spy from the venv running this script (``make bench`` installs it), else PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("endpoint", nargs="?", default="get_user", choices=list(ENDPOINTS))
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "sqlite"))
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--app", default="users_api", choices=list(APPS))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    out = OUT / f"{args.app}-{args.endpoint}-{args.backend}.txt"
    with (
        tempfile.TemporaryDirectory() as tmp,
        backend_database(args.backend, Path(tmp)) as url,
    ):
        database.migrate(url)
        database.seed(url, 10_000, 10)
        server = AppServer(APPS[args.app], url, log_dir=Path(tmp)).start()
        try:
            mode = ENDPOINTS[args.endpoint].mode
            run_wrk(server.base, mode, seconds=2, connections=64, max_id=10_000)
            assert server.process is not None
            spy = threading.Thread(
                target=subprocess.run,
                args=(
                    [
                        _py_spy(), "record", "--nonblocking", "--format", "raw",
                        "-d", str(int(args.seconds)), "-r", str(RATE), "-o", str(out),
                        "-p", str(server.process.pid),
                    ],
                ),
                kwargs={"capture_output": True, "check": False},
            )  # fmt: skip
            spy.start()
            sample = run_wrk(server.base, mode, seconds=args.seconds, connections=64, max_id=10_000)
            spy.join()
        finally:
            server.stop()
    print(f"{args.app} {args.endpoint} on {args.backend}: {sample.rps:,.0f} req/s")
    print(layers(out, sample.requests, RATE))
    print(summarise(out))


if __name__ == "__main__":
    main()
