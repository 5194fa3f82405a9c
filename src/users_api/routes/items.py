"""``/items``: create, read, list, update, delete, and process in the background."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import (
    ConnectionDep,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
)
from fastapi_dbpool.errors import conflict_of, error_responses

from ..models import Item, User
from ..processing import Claim, claim
from ..schemas import INT32_MAX, ItemCreate, ItemOut, ItemStatus, ItemUpdate, ProcessAccepted
from ..worker import WorkersDep

# Every route validates its input and touches the database: 422 and 503 for all of them.
router = APIRouter(prefix="/items", tags=["items"], responses=error_responses(422, 503))

ItemId = Annotated[int, Path(ge=1, le=INT32_MAX, description="The item's id")]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]


# One statement per filter combination, built once (see DirectConnection).
_LISTS = {
    (by_owner, by_status): select(Item.__table__)
    .where(
        *([Item.owner_id == bindparam("owner_id")] if by_owner else []),
        *([Item.status == bindparam("status")] if by_status else []),
    )
    .order_by(Item.id)
    .limit(bindparam("limit"))
    .offset(bindparam("offset"))
    for by_owner in (False, True)
    for by_status in (False, True)
}

_DELETE = delete(Item).where(Item.id == bindparam("item_id")).returning(Item.id)


def _update(fields: frozenset[str]) -> Any:
    # One conditional statement: changes the item if it is still there and returns it,
    # or matches nothing (deleted meanwhile: 404). No read first, so no race.
    return (
        update(Item)
        .where(Item.id == bindparam("item_id"))
        .values({field: bindparam(f"new_{field}") for field in fields})
        .returning(*Item.__table__.c)
    )


_UPDATES = {
    fields: _update(fields)
    for fields in (
        frozenset({"title"}),
        frozenset({"description"}),
        frozenset({"title", "description"}),
    )
}


# OpenAPI links from a created item to what can be done with it (FastAPI's operation ids).
_CREATED_LINKS = {
    name: {"operationId": operation_id, "parameters": {"item_id": "$response.body#/id"}}
    for name, operation_id in {
        "get_item": "get_item_items__item_id__get",
        "update_item": "update_item_items__item_id__patch",
        "delete_item": "delete_item_items__item_id__delete",
        "process_item": "process_items__item_id__process_post",
    }.items()
}


def _not_found(item_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"item {item_id} not found")


def _unknown_owner(owner_id: int) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", "owner_id"),
                "input": owner_id,
                "msg": f"Value error, no user with id {owner_id}",
            }
        ]
    )


# items.owner_id -> users.id, the table's only foreign key.
(_OWNER_FK,) = Item.metadata.tables[Item.__tablename__].foreign_key_constraints


def _owner_gone(error: IntegrityError) -> bool:
    """True when *error* is the owner's foreign key: the owner was deleted since we looked."""
    conflict = conflict_of(error)
    if conflict is None or conflict.code != "foreign_key_violation":
        return False
    # SQLite names no constraint for a foreign key ("FOREIGN KEY constraint failed");
    # on an insert into items it can only be the owner's, the one foreign key.
    anonymous = conflict.constraint is None and not conflict.columns
    return anonymous or conflict.on(_OWNER_FK)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ItemOut,
    responses={201: {"links": _CREATED_LINKS}, **error_responses(400, 409, 413)},
)
async def create_item(body: ItemCreate, session: SessionDep) -> Item:
    """Create an item, ``pending``, for an existing user."""
    if await session.get(User, body.owner_id) is None:
        raise _unknown_owner(body.owner_id)
    item = Item(title=body.title, description=body.description, owner_id=body.owner_id)
    session.add(item)
    try:
        await session.flush()
    except IntegrityError as error:
        if _owner_gone(error):
            raise _unknown_owner(body.owner_id) from None
        raise  # any other constraint: the library's 409, naming it
    return item


@router.get("", response_model=list[ItemOut])
async def list_items(
    db: ReadConnectionDep,
    owner_id: Annotated[int | None, Query(ge=1, le=INT32_MAX)] = None,
    item_status: Annotated[ItemStatus | None, Query(alias="status")] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """List items by id, optionally of one owner and/or in one status."""
    query = _LISTS[owner_id is not None, item_status is not None]
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if owner_id is not None:
        params["owner_id"] = owner_id
    if item_status is not None:
        params["status"] = item_status
    return await db.all(query, **params)


@router.get("/{item_id}", response_model=ItemOut, responses=error_responses(404))
async def get_item(item_id: ItemId, session: ReadSessionDep) -> Item:
    """Read one item."""
    item = await session.get(Item, item_id)
    if item is None:
        raise _not_found(item_id)
    return item


@router.patch("/{item_id}", response_model=ItemOut, responses=error_responses(400, 404, 413))
async def update_item(item_id: ItemId, body: ItemUpdate, db: ConnectionDep) -> dict[str, Any]:
    """Change an item's title and/or description."""
    changes = body.changes()
    params = {f"new_{field}": value for field, value in changes.items()}
    rows = await db.execute_committed(_UPDATES[frozenset(changes)], item_id=item_id, **params)
    if not rows:
        raise _not_found(item_id)
    return rows[0]


@router.delete(
    "/{item_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
)
async def delete_item(item_id: ItemId, db: ConnectionDep) -> None:
    """Delete an item."""
    if not await db.execute_committed(_DELETE, item_id=item_id):
        raise _not_found(item_id)


@router.post(
    "/{item_id}/process",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ProcessAccepted,
    responses={
        404: {**error_responses(404)[404], "description": "No such item"},
        409: {**error_responses(409)[409], "description": "Already done"},
    },
)
async def process(item_id: ItemId, db: ConnectionDep, workers: WorkersDep) -> ProcessAccepted:
    """Queue the item for processing; the 202 is sent after ``queued`` is committed.

    Asking again while it is queued or processing is accepted without a second run;
    once it is done, 409. A worker of this process is woken at once; the item is in the
    database, so any instance's worker may take it (see docs/background-work.md).
    """
    found, now = await claim(db, item_id)
    if found is Claim.MISSING:
        raise _not_found(item_id)
    if found is Claim.DONE:
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {item_id} is already processed")
    # The claim is committed (execute_committed), so a woken worker sees "queued". A
    # repeat wakes them too: cheap, and it brings an item queued during an outage
    # forward without waiting for the sweep.
    workers.wake()
    return ProcessAccepted.model_validate({"id": item_id, "status": now})
