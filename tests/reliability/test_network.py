"""Scenario 4: a slow, then black-holed network between the app and PostgreSQL.

The app reaches the server through the fault proxy. The network is first slow (every
answer from the server 500 ms late), then black-holed (connections accepted, nothing
forwarded, nothing closed: the proxy's ``stall()``), then restored with nothing cut, so
that the recovery is the app's own. What must hold: every request ends within its
deadline as 2xx or 503/504, none hangs, no 500; ``/health/ready`` turns 503 within
one probe of the blackhole and 200 within 1 s of the network's return; the pool
recovers without a restart: a second after the return every request is 2xx.

What bounds a request in the blackhole is the driver's no-answer deadline
(src/fastapi_dbpool/postgres/no_answer.py): DB_STATEMENT_TIMEOUT_MS + 1 s with a
statement timeout, DB_NO_ANSWER_TIMEOUT_S (default 30 s) without; see
docs/reliability.md, "Deadline arithmetic".

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
# Readiness is back within 1 s of the network's return, give or take one interval of
# the poller (faults.Readiness). Measured: 0.06 to 0.15 s (docs/reliability.md).
POLL_S = 0.1
# After the return, every request that starts this much later is 2xx.
SETTLED_S = 1.0
# Wait for a permit, a ping that gets no answer, a connection that cannot be opened,
# a statement that gets no answer, and closing the dead connection (SQLAlchemy gives
# a graceful close 2 s before it drops the socket).
CLOSE_S = 2


def deadline(no_answer_s: float) -> float:
    """The longest a request can take on a silent network (docs/reliability.md)."""
    return POOL_TIMEOUT_S + no_answer_s + CONNECT_TIMEOUT_S + no_answer_s + CLOSE_S


DEADLINE_S = deadline(NO_ANSWER_S)


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
            await asyncio.to_thread(proxy.stall)
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
    # slack for answers already on their way) ends 2xx before the network returns;
    # and the requests it caught were answered 503 in it, at their deadline.
    holed = ledger.between(hole_at + 1, back_at)
    assert not any(e.ok and e.ended < back_at for e in holed), f"{report}\n{holed}"
    assert any(e.status == 503 and hole_at <= e.ended < back_at for e in ledger.entries), report
    # Within one probe (its timeout plus the poll interval), and back within 1 s (plus
    # the poll interval).
    assert ready_503 is not None and ready_503 <= PROBE_TIMEOUT_S + 0.5, report
    assert ready_200 is not None and ready_200 <= 1.0 + POLL_S, report
    # The pool recovers by itself (the proxy cut nothing: the stalled links resumed, or
    # the app had discarded them), and a second later everything is 2xx.
    settled = [e for e in phases["after"] if e.started >= back_at + SETTLED_S]
    assert settled and all(e.ok for e in settled), report
    assert ledger.lost_writes(app_database) == [], report
    assert "Traceback" not in log, log[-3000:]


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


async def test_black_holed_network_with_default_statement_timeout(
    proxy: FaultProxy, app_database: str
) -> None:
    """Without DB_STATEMENT_TIMEOUT_MS, DB_NO_ANSWER_TIMEOUT_S bounds every request.

    The network stays silent longer than that bound (plus the harness's margin): a
    request that waited for the network's return instead of its deadline shows up
    as one that started in the blackhole and ended after it.
    """
    no_answer_s = 2
    bound = deadline(no_answer_s) + MARGIN_S
    hole_s = bound + 1
    env = base_env(proxy.url_for(app_database), DB_NO_ANSWER_TIMEOUT_S=str(no_answer_s))
    assert "DB_STATEMENT_TIMEOUT_MS" not in env  # the default: no statement timeout
    with uvicorn_server(USERS_API, env, access_log=False) as server:
        user_ids = await asyncio.to_thread(seed_users, server.url, 10)
        load = Load(server.url, user_ids, clients=4, timeout=hole_s + 30)
        run = asyncio.create_task(load.run(seconds=3600))
        try:
            await load.until(requests=50, timeout=30)
            await asyncio.to_thread(proxy.stall)
            hole_at = load.now()
            await asyncio.sleep(hole_s)
            await asyncio.to_thread(proxy.restore)
            back_at = load.now()
            await asyncio.sleep(2)
        finally:
            load.stop()
            ledger = await run
        server.stop()
        log = server.log()
    holed = ledger.between(hole_at, back_at)
    # Requests in flight in the blackhole that could meet their deadline in it: those
    # caught by the stall, and those that started early in it.
    caught = [e for e in ledger.entries if e.ended > hole_at and e.started + bound <= back_at]
    late = [e for e in caught if e.elapsed > bound or e.ended >= back_at]
    refused = [e for e in holed if e.status == 503]
    report = (
        ledger.summary("blackhole, default statement timeout: ")
        + f"\n  in the blackhole ({hole_s:g} s): {Ledger(holed).summary()}"
        + f"\n  bound {bound:g} s; {len(caught)} requests caught in it, the slowest "
        + f"{max((e.elapsed for e in caught), default=0):.2f} s"
    )
    print("\n" + report)
    assert caught, report
    assert late == [], f"{report}\nwaited for the network, not their deadline: {late[:5]}"
    # Nothing passes a stalled network: a request started in it is answered 503.
    assert all(e.status == 503 for e in caught if e.started >= hole_at), report
    assert refused and any(e.ended < back_at for e in refused), report
    codes = {e.code for e in refused}
    assert codes <= {"statement_timeout", "connect_failed", "pool_exhausted"}, report
    assert ledger.count(500) == 0, report
    assert ledger.count(None) == 0, report
    assert set(ledger.statuses) <= {200, 201, 503, 504}, report
    assert ledger.without_retry_after() == [], report
    assert ledger.lost_writes(app_database) == [], report
    assert "Traceback" not in log, log[-3000:]
