"""The items table as a work queue: claim an item under a lease, then finish, fail or release it.

Every function here is one short transaction on its own pooled connection, and takes
and returns plain values (ids, tokens), never ORM objects. The SQL is the same on both
databases; what makes a claim safe differs:

* PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` locks the row it returns and skips
  rows other transactions hold, so workers of many instances each get a different item
  without waiting for each other.
* SQLite: ``FOR UPDATE`` renders as nothing; a writing connection begins with
  ``BEGIN IMMEDIATE`` behind the library's write gate, so claims are serialised and the
  select and the update see the same rows.

A claim writes a fresh ``lease_token`` and ``lease_until = now + ITEM_LEASE_S``. Every
later write of the worker (finish, fail, release) checks the token, and finishing also
checks that the lease has not run out, while a claim takes only leases that have run
out: so at most one worker can ever apply a result, and a worker whose lease expired
applies nothing. Times are the application's clock (UTC); instances that share a
database must keep their clocks in step (NTP) to well under ``ITEM_LEASE_S``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update

from fastapi_dbpool import Database

from .models import Item, utcnow

__all__ = ["GaveUp", "Lease", "claim_next", "count_by_status", "fail", "finish", "release"]

MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class Lease:
    """A claimed item: what the worker needs to process it and to write its outcome."""

    item_id: int
    token: str
    description: str | None
    attempt: int
    queued_at: datetime | None
    took_over: bool
    """True when the previous holder's lease had run out (a lease expiry)."""
    deadline: float
    """``time.monotonic()`` at which the lease ends, by this process's clock; a little
    before the end written in the row, as it is counted from before the claim."""


@dataclass(frozen=True)
class GaveUp:
    """The item next in line had used its ITEM_MAX_ATTEMPTS claims and is now ``failed``."""

    item_id: int
    reason: str


# Built once, values as bindparam() (see DirectConnection). "IN (...)" is spelled with
# OR: a literal list would need SQLAlchemy's execution-time expansion.
_CLAIMABLE = (
    select(Item.id, Item.status, Item.attempts)
    .where(
        or_(
            Item.status == "queued",
            # A NULL lease on a processing row can only come from before the leases
            # (migration 0002): nobody holds it.
            and_(
                Item.status == "processing",
                or_(Item.lease_until.is_(None), Item.lease_until < bindparam("now")),
            ),
        )
    )
    .order_by(Item.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_TAKE = (
    update(Item)
    .where(Item.id == bindparam("item_id"))
    .values(
        status="processing",
        lease_token=bindparam("token"),
        lease_until=bindparam("until"),
        attempts=Item.attempts + 1,
    )
    .returning(Item.description, Item.attempts, Item.queued_at)
)
_GIVE_UP = (
    update(Item)
    .where(Item.id == bindparam("item_id"))
    .values(status="failed", error=bindparam("reason"), lease_token=None, lease_until=None)
)
_HELD = and_(
    Item.id == bindparam("item_id"),
    Item.status == "processing",
    Item.lease_token == bindparam("token"),
)
_FINISH = (
    update(Item)
    .where(_HELD, Item.lease_until >= bindparam("now"))
    .values(
        status="done",
        result=bindparam("result"),
        processed_at=bindparam("now"),
        applications=Item.applications + 1,
        lease_token=None,
        lease_until=None,
        error=None,
    )
    .returning(Item.queued_at, Item.processed_at)
)
_FAIL = (
    update(Item)
    .where(_HELD)
    .values(status="failed", error=bindparam("reason"), lease_token=None, lease_until=None)
    .returning(Item.id)
)
_RELEASE = (
    update(Item)
    .where(_HELD)
    .values(
        status="queued",
        lease_token=None,
        lease_until=None,
        attempts=Item.attempts - bindparam("refund"),
    )
    .returning(Item.id)
)
_COUNTS = select(Item.status, func.count().label("n")).group_by(Item.status)


def short(reason: str) -> str:
    """*reason*, cut to what the ``error`` column holds."""
    return reason if len(reason) <= MAX_ERROR_CHARS else reason[: MAX_ERROR_CHARS - 1] + "…"


async def claim_next(
    database: Database, *, lease_s: float, max_attempts: int
) -> Lease | GaveUp | None:
    """Claim the next queued item, or one whose lease ran out; None when there is none.

    One transaction: the select that picks the row and the update that leases it. An
    item that already had *max_attempts* claims is marked ``failed`` instead.

    Raises:
        DatabaseUnavailable: and the other errors of a database call; nothing is claimed.
    """
    started = time.monotonic()
    now = utcnow()
    token = uuid.uuid4().hex
    async with database.connection() as db:
        row = await db.one_or_none(_CLAIMABLE, now=now)
        if row is None:
            return None
        item_id = row["id"]
        if row["attempts"] >= max_attempts:
            reason = f"gave up after {row['attempts']} attempts"
            await db.all(_GIVE_UP, item_id=item_id, reason=reason)
            return GaveUp(item_id, reason)
        (taken,) = await db.all(
            _TAKE, item_id=item_id, token=token, until=now + timedelta(seconds=lease_s)
        )
    return Lease(
        item_id=item_id,
        token=token,
        description=taken["description"],
        attempt=taken["attempts"],
        queued_at=taken["queued_at"],
        took_over=row["status"] == "processing",
        deadline=started + lease_s,
    )


async def finish(database: Database, lease: Lease, result: dict[str, Any]) -> float | None:
    """Write the result if the lease still holds; return seconds since queued, or None.

    None means nothing was written: the lease ran out (another worker may have the
    item now) or the item was deleted. A known queued time gives a float, else -1.0.
    """
    async with database.connection() as db:
        rows = await db.execute_committed(
            _FINISH, item_id=lease.item_id, token=lease.token, now=utcnow(), result=result
        )
    if not rows:
        return None
    queued_at, processed_at = rows[0]["queued_at"], rows[0]["processed_at"]
    return -1.0 if queued_at is None else (processed_at - queued_at).total_seconds()


async def fail(database: Database, lease: Lease, reason: str) -> bool:
    """Mark the item ``failed`` with *reason*, if the lease is still ours; say if it was."""
    async with database.connection() as db:
        rows = await db.execute_committed(
            _FAIL, item_id=lease.item_id, token=lease.token, reason=short(reason)
        )
    return bool(rows)


async def release(database: Database, lease: Lease, *, refund: bool = False) -> bool:
    """Put the item back in the queue, for any instance; say if it was ours.

    Args:
        database: The app's database.
        lease: The lease to give back.
        refund: Give the claim back too (shutdown: the attempt did not fail).
    """
    async with database.connection() as db:
        rows = await db.execute_committed(
            _RELEASE, item_id=lease.item_id, token=lease.token, refund=int(refund)
        )
    return bool(rows)


async def count_by_status(database: Database) -> dict[str, int]:
    """How many items are in each status now."""
    async with database.connection(read_only=True) as db:
        rows = await db.all(_COUNTS)
    return {row["status"]: int(row["n"]) for row in rows}
