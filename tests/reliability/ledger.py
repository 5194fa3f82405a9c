"""A bounded load generator on 127.0.0.1 that keeps a ledger of every request.

Each of *clients* tasks sends requests of the users_api in a mix of reads and writes
until the run's time is up or its request budget is spent. Every request becomes one
:class:`Entry`: what was sent, when, how long it took, the status (or the transport
error), and for a write what it wrote. A write answered 2xx is *acknowledged*: the
service promised it is stored, so after the run every acknowledged write must be in
the database (:meth:`Ledger.lost_writes`). A write that got no answer, or a 503 whose
``code`` does not prove that nothing ran (the connection was lost mid-request, the
server shut down, the statement was cancelled), has an *unknown outcome*: it may or
may not be stored, and the ledger counts it and finds out afterwards. A 503 whose code
says the statement never reached the server (no connection could be opened or taken
from the pool) is a *definite failure*: the write must not be stored.

Each client renames only users of its own, one request at a time, so the renames of
one user never overlap: after the run a user's name must be its last acknowledged
rename, or a later rename of unknown outcome.

Usage::

    load = Load(server.url, user_ids, clients=20)
    task = asyncio.create_task(load.run(seconds=10))
    ...                                     # inject a fault
    ledger = await task
    print(ledger.summary())
    assert ledger.count(500) == 0
    assert ledger.lost_writes(database_url) == []
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
import psycopg

from tests.backends import libpq_url

__all__ = ["NOTHING_WRITTEN_CODES", "READS_AND_WRITES", "Entry", "Ledger", "Load", "seed_users"]

# Operation -> weight. A read by id on a direct connection, a list through a session;
# writes as one committed statement each (POST /users, PATCH /users/{id}).
READS_AND_WRITES = {"get_user": 4, "list_users": 1, "create_user": 3, "rename_user": 1}

# Codes of a 503 that prove the statement never reached the server: no connection could
# be opened (connect_failed; cannot_connect_now, the server still starting) or taken from
# the pool (pool_exhausted, too_many_waiting) (fastapi_dbpool.errors), or the shutdown
# guard refused the request before the app saw it (shutting_down,
# fastapi_dbpool.request.shutdown). A 503 of any other code leaves the outcome unknown:
# connection_lost, admin_shutdown, crash_shutdown and statement_timeout came while a
# statement or its COMMIT was in flight; the guard's shutdown_grace_expired cut a
# request that was running, maybe just after its COMMIT.
NOTHING_WRITTEN_CODES = frozenset(
    {"connect_failed", "cannot_connect_now", "pool_exhausted", "too_many_waiting", "shutting_down"}
)


@dataclass(slots=True)
class Entry:
    """One request: what, when (seconds since the run began), how long, and the answer."""

    op: str
    started: float
    elapsed: float = 0.0
    status: int | None = None  # None: no HTTP answer (see error)
    error: str | None = None  # the transport error's class name
    code: str | None = None  # the body's "code" on an error answer
    reason: str | None = None  # the body's "reason" on an error answer
    retry_after: str | None = None
    written: str | None = None  # for a write: the email or name it wrote
    user_id: int | None = None  # for a rename: the user renamed

    @property
    def ok(self) -> bool:
        """Answered 2xx."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def ended(self) -> float:
        """When the answer came, in seconds since the run began."""
        return self.started + self.elapsed


@dataclass
class Ledger:
    """Every request of a run, in the order they ended."""

    entries: list[Entry] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: int | None) -> int:
        """Requests answered *status* (None: no answer at all)."""
        return sum(1 for entry in self.entries if entry.status == status)

    @property
    def statuses(self) -> Counter[int | None]:
        """How many requests got each status (None: transport error)."""
        return Counter(entry.status for entry in self.entries)

    @property
    def writes(self) -> list[Entry]:
        """Every write request."""
        return [entry for entry in self.entries if entry.written is not None]

    @property
    def acknowledged(self) -> list[Entry]:
        """Writes answered 2xx: the service said they are stored."""
        return [entry for entry in self.writes if entry.ok]

    @property
    def unknown(self) -> list[Entry]:
        """Writes that may or may not be stored: no answer, or a 5xx not proven harmless."""
        return [entry for entry in self.writes if _outcome_unknown(entry)]

    def without_retry_after(self) -> list[Entry]:
        """503 answers that did not say when to retry."""
        return [e for e in self.entries if e.status == 503 and not e.retry_after]

    def slowest(self) -> float:
        """The longest a request took, in seconds."""
        return max((entry.elapsed for entry in self.entries), default=0.0)

    def between(self, start: float, end: float) -> list[Entry]:
        """Requests that started in ``[start, end)`` (seconds since the run began)."""
        return [entry for entry in self.entries if start <= entry.started < end]

    def first_ok_after(self, moment: float) -> float | None:
        """Seconds from *moment* to the end of the first 2xx request started after it."""
        ends = [e.ended for e in self.entries if e.ok and e.started >= moment]
        return min(ends) - moment if ends else None

    def stored(self, database_url: str) -> tuple[set[str], dict[int, str]]:
        """The emails of users in the database, and each user's name by id."""
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            rows = conn.execute("SELECT id, email, name FROM users").fetchall()
        return {email for _, email, _ in rows}, {user_id: name for user_id, _, name in rows}

    def lost_writes(self, database_url: str) -> list[Entry]:
        """Acknowledged writes the database does not show.

        An acknowledged create whose row is missing; the last acknowledged rename of a
        user whose name is neither that rename's nor one of a later rename of unknown
        outcome.
        """
        emails, names = self.stored(database_url)
        lost = [
            entry
            for entry in self.acknowledged
            if entry.op == "create_user" and entry.written not in emails
        ]
        return lost + self.lost_renames(names)

    def lost_renames(self, names: dict[int, str]) -> list[Entry]:
        """The last acknowledged rename of each user whose final name (*names*) denies it."""
        lost = []
        for renames in self._renames_by_user().values():
            acknowledged = [e for e in renames if e.ok]
            if not acknowledged:
                continue
            last = acknowledged[-1]
            assert last.user_id is not None
            allowed = {last.written} | {
                e.written for e in renames if e.started > last.started and _outcome_unknown(e)
            }
            if names.get(last.user_id) not in allowed:
                lost.append(last)
        return lost

    def unknown_stored(self, database_url: str) -> int:
        """Creates with an unknown outcome that turned out stored."""
        emails, _ = self.stored(database_url)
        return sum(1 for e in self.unknown if e.op == "create_user" and e.written in emails)

    def phantom_writes(self, database_url: str) -> list[Entry]:
        """Writes answered with a definite failure that are in the database anyway.

        A create whose row exists; a rename whose name is its user's final name.
        """
        emails, names = self.stored(database_url)
        return self.phantoms(emails, names)

    def phantoms(self, emails: set[str], names: dict[int, str]) -> list[Entry]:
        """:meth:`phantom_writes` against the *emails* and *names* given."""
        failed = [e for e in self.writes if not e.ok and not _outcome_unknown(e)]
        return [
            e
            for e in failed
            if (e.op == "create_user" and e.written in emails)
            or (
                e.op == "rename_user"
                and e.user_id is not None
                and names.get(e.user_id) == e.written
            )
        ]

    def renamed_users(self) -> int:
        """Users with at least one acknowledged rename (checked by :meth:`lost_writes`)."""
        return sum(1 for renames in self._renames_by_user().values() if any(e.ok for e in renames))

    def _renames_by_user(self) -> dict[int, list[Entry]]:
        """Each user's renames, in the order they were sent."""
        by_user: dict[int, list[Entry]] = {}
        for entry in sorted(self.writes, key=lambda e: e.started):
            if entry.op == "rename_user" and entry.user_id is not None:
                by_user.setdefault(entry.user_id, []).append(entry)
        return by_user

    def summary(self, title: str = "") -> str:
        """One line of figures: requests, statuses, writes, unknowns, slowest."""
        statuses = ", ".join(
            f"{status if status is not None else 'no answer'}: {n}"
            for status, n in sorted(self.statuses.items(), key=lambda kv: str(kv[0]))
        )
        failed = Counter(f"{e.op} {e.status or e.error}" for e in self.entries if not e.ok)
        seconds = self.seconds or (
            max(e.ended for e in self.entries) - min(e.started for e in self.entries)
            if self.entries
            else 0.0
        )
        return (
            f"{title}{len(self.entries)} requests in {seconds:.1f} s "
            f"({statuses}); writes acknowledged {len(self.acknowledged)} "
            f"({self.renamed_users()} users renamed), "
            f"unknown outcome {len(self.unknown)}; slowest {self.slowest():.2f} s"
            + (f"; failures {dict(failed)}" if failed else "")
        )


def _outcome_unknown(entry: Entry) -> bool:
    """A write that may or may not be stored: no answer, or a 5xx not proven harmless."""
    if entry.status is None:
        return True
    return entry.status >= 500 and entry.code not in NOTHING_WRITTEN_CODES


def seed_users(base_url: str, count: int) -> list[int]:
    """Create *count* users through the API; return their ids."""
    ids = []
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for _ in range(count):
            email = f"seed-{uuid.uuid4().hex[:12]}@example.com"
            answer = client.post("/users", json={"name": "seed", "email": email})
            answer.raise_for_status()
            ids.append(answer.json()["id"])
    return ids


class Load:
    """*clients* concurrent clients sending a weighted mix of requests to *base_url*.

    Args:
        base_url: The app, ``http://127.0.0.1:PORT``.
        user_ids: Existing users to read, and to rename: client *i* renames only
            ``user_ids[i::clients]`` (a client without users of its own reads instead).
        clients: Concurrent clients, each with its own keep-alive connection.
        mix: Operation -> weight (see :data:`READS_AND_WRITES`).
        timeout: Seconds after which the client gives up on a request (counted as
            no answer, ``error="ReadTimeout"``); set it past every server deadline.
        max_requests: Stop after this many requests in all.
        pace_s: Pause of each client between two requests.
    """

    def __init__(
        self,
        base_url: str,
        user_ids: list[int],
        *,
        clients: int = 20,
        mix: dict[str, int] | None = None,
        timeout: float = 30,
        max_requests: int = 200_000,
        pace_s: float = 0.0,
    ) -> None:
        self.base_url = base_url
        self.user_ids = user_ids
        self.clients = clients
        mix = mix or READS_AND_WRITES
        self.ops = list(mix)
        self.weights = list(mix.values())
        self.timeout = timeout
        self.max_requests = max_requests
        self.pace_s = pace_s
        self.ledger = Ledger()
        self._serial = itertools.count()
        self._run_tag = uuid.uuid4().hex[:8]
        self._stop = asyncio.Event()
        self._answered = asyncio.Event()  # set at each new entry
        self._t0 = 0.0

    def now(self) -> float:
        """Seconds since the run began (the ledger's clock)."""
        return time.monotonic() - self._t0

    def stop(self) -> None:
        """End the run once the requests in flight are answered."""
        self._stop.set()

    async def until(self, *, requests: int, timeout: float) -> None:
        """Wait until the ledger holds *requests* entries; fail after *timeout* seconds."""
        async with asyncio.timeout(timeout):
            while len(self.ledger.entries) < requests:
                self._answered.clear()
                await self._answered.wait()

    async def run(self, seconds: float) -> Ledger:
        """Send requests for *seconds* (or until :meth:`stop`); return the ledger."""
        self._t0 = time.monotonic()
        # Idle connections are dropped after 2 s, before uvicorn's keep-alive timeout (5 s)
        # closes them: a request sent as the server closes its connection fails with a
        # ReadError that says nothing about the app.
        limits = httpx.Limits(
            max_connections=self.clients,
            max_keepalive_connections=self.clients,
            keepalive_expiry=2,
        )
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=self.timeout, limits=limits
        ) as client:
            deadline = self._t0 + seconds
            await asyncio.gather(
                *(
                    self._client(client, deadline, self.user_ids[n :: self.clients])
                    for n in range(self.clients)
                )
            )
        self.ledger.seconds = self.now()
        return self.ledger

    async def _client(self, client: httpx.AsyncClient, deadline: float, own: list[int]) -> None:
        rng = random.Random()
        while not self._stop.is_set() and time.monotonic() < deadline:
            serial = next(self._serial)
            if serial >= self.max_requests:
                return
            op = rng.choices(self.ops, self.weights)[0]
            if op == "rename_user" and not own:
                op = "get_user"
            await self._send(client, op, serial, rng, own)
            if self.pace_s:
                await asyncio.sleep(self.pace_s)

    async def _send(
        self, client: httpx.AsyncClient, op: str, serial: int, rng: random.Random, own: list[int]
    ) -> None:
        user_id = rng.choice(own if op == "rename_user" else self.user_ids)
        written = None
        if op == "get_user":
            request = client.build_request("GET", f"/users/{user_id}")
        elif op == "list_users":
            request = client.build_request("GET", "/users", params={"limit": 20})
        elif op == "create_user":
            written = f"w-{self._run_tag}-{serial}@example.com"
            request = client.build_request(
                "POST", "/users", json={"name": "load", "email": written}
            )
        elif op == "rename_user":
            written = f"r-{self._run_tag}-{serial}"
            request = client.build_request("PATCH", f"/users/{user_id}", json={"name": written})
        else:
            raise ValueError(f"unknown operation {op!r}")
        entry = Entry(
            op=op,
            started=self.now(),
            written=written,
            user_id=user_id if op == "rename_user" else None,
        )
        began = time.monotonic()
        try:
            answer = await client.send(request)
        except httpx.HTTPError as error:
            entry.error = type(error).__name__
        else:
            entry.status = answer.status_code
            entry.retry_after = answer.headers.get("retry-after")
            if answer.status_code >= 400:
                try:
                    body = answer.json()
                except ValueError:
                    body = None
                if isinstance(body, dict):
                    entry.code = body.get("code")
                    entry.reason = body.get("reason")
        entry.elapsed = time.monotonic() - began
        self.ledger.entries.append(entry)
        self._answered.set()
