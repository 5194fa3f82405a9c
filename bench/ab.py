"""Same-run A/B of users_api: this working tree against another revision's library and service.

``python -m bench.ab --base REV [--endpoint get_user] [--backend postgresql] [--pairs 4]``

REV's ``src/`` is exported to a temporary directory and served from there (it comes first
on ``PYTHONPATH``); the working tree is served as installed. Both run at once, on the
app CPU, against one seeded database, and are measured in adjacent pairs, alternating
which goes first. Reported per side: the median req/s and the app process's CPU time per
request (user + system, from ``/proc/<pid>/stat``), which a busy machine disturbs far
less than throughput; and the median of the pairs' ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import database
from .harness import backend_database
from .loadgen import ENDPOINTS, run_wrk
from .servers import APPS, ROOT, AppServer

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process *pid* has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class Side:
    name: str
    server: AppServer
    rps: list[float]
    cpu_us: list[float]

    def measure(self, endpoint: str, seconds: float, connections: int, max_id: int) -> None:
        assert self.server.process is not None
        pid = self.server.process.pid
        mode = ENDPOINTS[endpoint].mode
        run_wrk(self.server.base, mode, seconds=1, connections=connections, max_id=max_id)
        before = cpu_seconds(pid)
        sample = run_wrk(
            self.server.base, mode, seconds=seconds, connections=connections, max_id=max_id
        )
        used = cpu_seconds(pid) - before
        if sample.errors:
            raise SystemExit(f"{self.name}: {sample.errors} errors during {endpoint}")
        self.rps.append(sample.rps)
        self.cpu_us.append(used / max(sample.requests, 1) * 1e6)


def export_src(rev: str, into: Path) -> Path:
    """Write *rev*'s ``src/`` under *into*; return the directory to put on PYTHONPATH."""
    archive = subprocess.run(
        ["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--base", required=True, help="the revision to compare with (git rev)")
    parser.add_argument("--endpoint", choices=sorted(ENDPOINTS), default="get_user")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for both servers (repeatable)"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="dbpool-ab-") as tmp:
        work = Path(tmp)
        base_src = export_src(args.base, work)
        with backend_database(args.backend, work) as url:
            database.migrate(url)
            database.seed(url, args.users, 10)
            max_id = args.users * 10 if args.endpoint == "process_item" else args.users
            old = AppServer(APPS["users_api"], url, extra_env=extra, log_dir=work)
            old.extra_env = {**extra, "PYTHONPATH": f"{base_src}{os.pathsep}{ROOT}"}
            new = AppServer(APPS["users_api"], url, extra_env=extra, log_dir=work)
            sides = [
                Side(args.base, old.start(), [], []),
                Side("working tree", new.start(), [], []),
            ]
            try:
                for pair in range(args.pairs):
                    for side in sides if pair % 2 == 0 else sides[::-1]:
                        side.measure(args.endpoint, args.seconds, args.connections, max_id)
                        if args.endpoint == "post_user":
                            database.drop_new_users(url, args.users)
                        if args.endpoint == "process_item":
                            database.reset_items(url)
            finally:
                for side in sides:
                    side.server.stop()
    print(
        f"{args.endpoint} on {args.backend}, c={args.connections}, "
        f"{args.pairs} pairs of {args.seconds:g} s"
    )
    for side in sides:
        print(
            f"  {side.name:<14} req/s median {statistics.median(side.rps):8.0f} "
            f"{[round(r) for r in side.rps]}   CPU/request median "
            f"{statistics.median(side.cpu_us):6.0f} us {[round(c) for c in side.cpu_us]}"
        )
    ratios = [n / o for o, n in zip(sides[0].rps, sides[1].rps, strict=True)]
    cpu = [n / o for o, n in zip(sides[0].cpu_us, sides[1].cpu_us, strict=True)]
    print(
        f"  working tree / {args.base}: req/s x{statistics.median(ratios):.3f}, "
        f"CPU per request x{statistics.median(cpu):.3f}"
    )


if __name__ == "__main__":
    main()
