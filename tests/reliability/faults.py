"""What the fault scenarios share: a restart under load, recovery checks, a readiness poller."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx

from tests.pgcluster import PgCluster
from tests.reliability.ledger import Entry, Ledger, Load, seed_users

__all__ = [
    "RECOVERY_S",
    "Readiness",
    "assert_recovered",
    "failed_during",
    "restarts_under_load",
]

# After the server is back, the app serves normally within this many seconds.
RECOVERY_S = 1.0


async def restarts_under_load(
    cluster: PgCluster,
    base_url: str,
    *,
    restarts: int,
    outage_s: float,
    between_s: float,
    timeout: float = 30,
) -> tuple[Ledger, list[tuple[float, float]]]:
    """Load *base_url* while *cluster* goes down *restarts* times (``pg_ctl stop -m fast``).

    Returns the ledger and each outage as (down, up) in the ledger's seconds; *timeout*
    is the client's own limit per request.
    """
    user_ids = await asyncio.to_thread(seed_users, base_url, 20)
    load = Load(base_url, user_ids, clients=20, timeout=timeout)
    run = asyncio.create_task(load.run(seconds=3600))
    outages = []
    try:
        for _ in range(restarts):
            await load.until(requests=len(load.ledger.entries) + 50, timeout=60)
            await asyncio.sleep(between_s)  # the load's own pace between two outages
            down = load.now()
            await asyncio.to_thread(cluster.stop, "fast")
            await asyncio.sleep(outage_s)  # how long the server stays down
            await asyncio.to_thread(cluster.start)
            outages.append((down, load.now()))
        await asyncio.sleep(between_s)
    finally:
        load.stop()
        ledger = await run
    return ledger, outages


def assert_recovered(ledger: Ledger, outages: list[tuple[float, float]], report: str) -> None:
    """Back to 2xx within RECOVERY_S of each return, and only 2xx after that."""
    for index, (_, up) in enumerate(outages):
        first = ledger.first_ok_after(up)
        assert first is not None and first <= RECOVERY_S, report
        end = outages[index + 1][0] if index + 1 < len(outages) else float("inf")
        # Up to the next outage: requests still running when it begins may fail.
        after = [e for e in ledger.between(up + RECOVERY_S, end) if not e.ok and e.ended < end]
        assert after == [], f"{report}\nerrors after recovery: {after[:5]}"


def failed_during(
    ledger: Ledger, faults: list[tuple[float, float]], deadline: float
) -> list[Entry]:
    """Requests answered 503, or not at all, that ended during a fault or *deadline* after it.

    *faults* are (start, end) in the ledger's seconds.
    """
    return [
        entry
        for entry in ledger.entries
        if (entry.status == 503 or entry.status is None)
        and any(start <= entry.ended <= end + deadline for start, end in faults)
    ]


@dataclass
class Readiness:
    """``GET /health/ready`` polled every 100 ms: (seconds since start, status) pairs."""

    url: str
    t0: float
    samples: list[tuple[float, int | None]] = field(default_factory=list)

    async def poll(self, stop: asyncio.Event) -> None:
        stopped = asyncio.ensure_future(stop.wait())
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    status: int | None = (await client.get("/health/ready")).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((time.monotonic() - self.t0, status))
                await asyncio.wait([stopped], timeout=0.1)  # the poll interval, or stop

    def first(self, status: int, after: float) -> float | None:
        """Seconds from *after* to the first probe answered *status* after it."""
        times = [at for at, got in self.samples if got == status and at >= after]
        return min(times) - after if times else None
