"""Item processing, run after the response by a background task with its own sessions.

The states move forward only, each step a conditional UPDATE so that two runs of the
same item (a repeated request, a restart that resumes stranded work) cannot both
proceed::

    pending ──process──▶ queued ──task──▶ processing ──▶ done
       ▲                                      │
       └──────────── failed ◀─────────────────┘ (on error; may be processed again)

The task receives the item's id, never the ORM object or the request's session, and
opens one short transaction per step, so no connection is held while it computes.
"""

from __future__ import annotations

import logging
from enum import Enum

from sqlalchemy import bindparam, or_, select, update

from fastapi_dbpool import Database, DirectConnection

from .models import Item, utcnow

logger = logging.getLogger("users_api.processing")

# Processing may be asked for again once it has failed, never once it is done.
PROCESSABLE = ("pending", "failed")
IN_FLIGHT = ("queued", "processing")


class Claim(Enum):
    """What ``POST /items/{id}/process`` found."""

    QUEUED = "queued"  # moved to "queued" now: schedule a run
    ALREADY = "already"  # queued or processing already: no second run
    DONE = "done"  # nothing left to do: 409
    MISSING = "missing"  # no such item: 404


# Each step is one conditional UPDATE, so each runs as its own transaction on a direct
# connection (execute_committed: one round trip, committed when it returns). The
# statements are built once, values as bindparam(); "IN (...)" is spelled with OR, as a
# literal list would need SQLAlchemy's execution-time expansion.
_CLAIM = (
    update(Item)
    .where(Item.id == bindparam("item_id"), or_(*(Item.status == s for s in PROCESSABLE)))
    .values(status="queued", result=None, processed_at=None)
    .returning(Item.id)
)
_STATUS = select(Item.status).where(Item.id == bindparam("item_id"))
_START = (
    update(Item)
    .where(Item.id == bindparam("item_id"), Item.status == "queued")
    .values(status="processing")
    .returning(Item.description)
)
_FINISH = (
    update(Item)
    .where(Item.id == bindparam("item_id"), Item.status == "processing")
    .values(status="done", result=bindparam("result"), processed_at=bindparam("processed_at"))
)
_FAIL = (
    update(Item)
    .where(Item.id == bindparam("item_id"), Item.status == "processing")
    .values(status="failed")
)


async def claim(db: DirectConnection, item_id: int) -> tuple[Claim, str | None]:
    """Move the item to ``queued`` if it may be processed; say what was found.

    The move is committed when this returns. Returns the outcome and the item's status
    now (None if there is no such item).
    """
    if await db.execute_committed(_CLAIM, item_id=item_id):
        return Claim.QUEUED, "queued"
    status = await db.scalar(_STATUS, item_id=item_id)
    if status is None:
        return Claim.MISSING, None
    return (Claim.DONE if status == "done" else Claim.ALREADY), status


def analyse(description: str | None) -> dict[str, int]:
    """The result of processing: words and characters of the description."""
    text = description or ""
    return {"words": len(text.split()), "characters": len(text)}


async def process_item(database: Database, item_id: int) -> None:
    """Run one item from ``queued`` to ``done`` (or ``failed``), in three transactions."""
    async with database.connection() as db:
        started = await db.execute_committed(_START, item_id=item_id)
    if not started:
        return  # deleted, or another run took it
    try:
        result = analyse(started[0]["description"])
        async with database.connection() as db:
            await db.execute_committed(
                _FINISH, item_id=item_id, result=result, processed_at=utcnow()
            )
    except Exception:
        logger.exception("processing item %d failed", item_id)
        async with database.connection() as db:
            await db.execute_committed(_FAIL, item_id=item_id)


async def resume_stranded(database: Database) -> int:
    """Run again the items a previous process left queued or processing; return how many.

    A process that dies after answering 202 leaves its items queued. Processing is
    idempotent (the result depends only on the description and every step is a
    conditional UPDATE), so running such an item again is safe.
    """
    async with database.session() as session:
        await session.execute(
            update(Item).where(Item.status == "processing").values(status="queued")
        )
        ids = list(await session.scalars(select(Item.id).where(Item.status == "queued")))
    for item_id in ids:
        await process_item(database, item_id)
    if ids:
        logger.info("resumed %d stranded item(s)", len(ids))
    return len(ids)
