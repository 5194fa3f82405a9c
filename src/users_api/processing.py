"""Item processing: what ``POST /items/{id}/process`` does, and the processing itself.

The endpoint only moves the item to ``queued`` (committed before the 202); the workers
of :mod:`users_api.worker` take it from there, through the lease of
:mod:`users_api.item_queue`. The states::

    pending ──process──▶ queued ──claim──▶ processing ──finish──▶ done
       ▲                  ▲  ▲                 │  │
       │                  │  └── release ──────┘  │ (shutdown; an expired lease is
       │                  │                       │  claimed again, by any instance)
       └──── failed ◀─────┴── fail / ITEM_MAX_ATTEMPTS claims
             (may be processed again)

The full story, with the SQL and the failure table, is in docs/background-work.md.
"""

from __future__ import annotations

from enum import Enum

from sqlalchemy import bindparam, or_, select, update

from fastapi_dbpool import DirectConnection

from .models import Item, utcnow

# Processing may be asked for again once it has failed, never once it is done.
PROCESSABLE = ("pending", "failed")
IN_FLIGHT = ("queued", "processing")


class Claim(Enum):
    """What ``POST /items/{id}/process`` found."""

    QUEUED = "queued"  # moved to "queued" now: a worker will run it
    ALREADY = "already"  # queued or processing already: no second run
    DONE = "done"  # nothing left to do: 409
    MISSING = "missing"  # no such item: 404


# One conditional UPDATE, run on its own (execute_committed: one round trip, committed
# when it returns), so two requests for one item cannot both queue it. Built once,
# values as bindparam(); "IN (...)" is spelled with OR, as a literal list would need
# SQLAlchemy's execution-time expansion.
_CLAIM = (
    update(Item)
    .where(Item.id == bindparam("item_id"), or_(*(Item.status == s for s in PROCESSABLE)))
    .values(
        status="queued",
        result=None,
        processed_at=None,
        queued_at=bindparam("now"),
        lease_token=None,
        lease_until=None,
        attempts=0,
        error=None,
    )
    .returning(Item.id)
)
_STATUS = select(Item.status).where(Item.id == bindparam("item_id"))


async def claim(db: DirectConnection, item_id: int) -> tuple[Claim, str | None]:
    """Move the item to ``queued`` if it may be processed; say what was found.

    The move is committed when this returns. Returns the outcome and the item's status
    now (None if there is no such item).
    """
    if await db.execute_committed(_CLAIM, item_id=item_id, now=utcnow()):
        return Claim.QUEUED, "queued"
    status = await db.scalar(_STATUS, item_id=item_id)
    if status is None:
        return Claim.MISSING, None
    return (Claim.DONE if status == "done" else Claim.ALREADY), status


def analyse(description: str | None) -> dict[str, int]:
    """The result of processing: words and characters of the description."""
    text = description or ""
    return {"words": len(text.split()), "characters": len(text)}
