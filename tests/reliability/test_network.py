"""Scenario 4: a slow, then black-holed network between the app and PostgreSQL.

The app reaches the server through the fault proxy. The network is first slow (every
answer from the server 500 ms late), then black-holed (connections accepted, nothing answered,
nothing closed), then restored. What must hold: every request ends within its
deadline as 2xx or 503/504, none hangs, no 500; ``/health/ready`` turns 503 within
one probe of the blackhole and 200 within 1 s of the network's return; the pool
recovers without a restart: afterwards every request is 2xx.

The blackhole is bounded only with ``DB_STATEMENT_TIMEOUT_MS`` set: the driver then
gives up DB_STATEMENT_TIMEOUT_MS + 1 s after a statement got no answer (see
src/fastapi_dbpool/postgres/no_answer.py and docs/reliability.md, "Deadline arithmetic").

Figures: ``.venv/bin/pytest tests/reliability/test_network.py -s``
(``RELIABILITY_FULL=1``: 10 s of blackhole).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.reliability.conftest import CONNECT_TIMEOUT_S, MARGIN_S, POOL_TIMEOUT_S, base_env, scaled
from tests.reliability.faults import Readiness
from tests.reliability.ledger import Ledger, Load, seed_users
from tests.reliability.proxy import FaultProxy
from tests.servers import USERS_API, uvicorn_server

pytestmark = [pytest.mark.postgres_only, pytest.mark.slow, pytest.mark.timing]

STATEMENT_TIMEOUT_MS = 1000
NO_ANSWER_S = STATEMENT_TIMEOUT_MS / 1000 + 1  # the driver's command_timeout
PROBE_TIMEOUT_S = 1.0  # health_router's default
# Wait for a permit, a ping that gets no answer, a connection that cannot be opened,
# a statement that gets no answer, and closing the dead connection (SQLAlchemy gives
# a graceful close 2 s before it drops the socket).
DEADLINE_S = POOL_TIMEOUT_S + NO_ANSWER_S + CONNECT_TIMEOUT_S + NO_ANSWER_S + 2


async def test_slow_then_black_holed_network(proxy: FaultProxy, app_database: str) -> None:
    slow_s = scaled(2, 10)
    blackhole_s = scaled(5, 10)
    after_s = scaled(3, 10)
    env = base_env(proxy.url_for(app_database), DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS))
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        user_ids = await asyncio.to_thread(seed_users, server.url, 20)
        load = Load(server.url, user_ids, clients=8, timeout=DEADLINE_S + 30)
        run = asyncio.create_task(load.run(seconds=3600))
        await load.until(requests=100, timeout=30)
        readiness = Readiness(server.url, load._t0)
        stop = asyncio.Event()
        poller = asyncio.create_task(readiness.poll(stop))
        try:
            await asyncio.to_thread(proxy.delay, 500)
            slow_at = load.now()  # each phase starts once the proxy has switched
            await asyncio.sleep(slow_s)  # how long the network stays slow
            await asyncio.to_thread(proxy.blackhole)
            hole_at = load.now()
            await asyncio.sleep(blackhole_s)  # how long it stays black-holed
            await asyncio.to_thread(proxy.restore)
            back_at = load.now()
            await asyncio.sleep(after_s)  # the load's pace after the return
        finally:
            load.stop()
            ledger = await run
            stop.set()
            await poller
        server.stop()
        log = server.log()
    phases = {
        "before": ledger.between(0, slow_at),
        "slow": ledger.between(slow_at, hole_at),
        "blackhole": ledger.between(hole_at, back_at),
        "after": ledger.between(back_at, float("inf")),
    }
    ready_503 = readiness.first(503, hole_at)
    ready_200 = readiness.first(200, back_at)
    first_ok = ledger.first_ok_after(back_at)
    report = (
        ledger.summary("network: ")
        + "".join(f"\n  {name}: {Ledger(entries).summary()}" for name, entries in phases.items())
        + (
            f"\n  readiness 503 {_s(ready_503)} after the blackhole, 200 {_s(ready_200)} after "
            f"the return; first 2xx {_s(first_ok)} after the return"
        )
    )
    print("\n" + report)
    assert ledger.count(500) == 0, report
    assert ledger.count(None) == 0, report  # none hung past the client's own timeout
    assert set(ledger.statuses) <= {200, 201, 503, 504}, report
    assert ledger.without_retry_after() == [], report
    assert ledger.slowest() <= DEADLINE_S + MARGIN_S, report
    assert any(e.ok for e in phases["slow"]), report  # slow, but served
    # Nothing gets through the blackhole: no request started in it (after 1 s of
    # slack for answers already on their way) ends 2xx before the network returns.
    holed = ledger.between(hole_at + 1, back_at)
    assert not any(e.ok and e.ended < back_at for e in holed), f"{report}\n{holed}"
    assert any(not e.ok for e in holed), report
    # Within one probe (its timeout plus the poll interval), and back within 1 s (plus
    # what the loaded machine adds to a probe's new connection).
    assert ready_503 is not None and ready_503 <= PROBE_TIMEOUT_S + 0.5, report
    assert ready_200 is not None and ready_200 <= 1.0 + 0.5, report
    # The pool recovers by itself: the links stuck in the blackhole are cut as the
    # network returns, and a second later everything is 2xx.
    settled = [e for e in phases["after"] if e.started >= back_at + 2]
    assert settled and all(e.ok for e in settled), report
    assert ledger.lost_writes(app_database) == [], report
    assert "Traceback" not in log, log[-3000:]


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"
