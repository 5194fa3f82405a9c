"""``/users``: create, read, list, update, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy import UniqueConstraint, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import (
    ConnectionDep,
    ReadConnectionDep,
    ReadSessionDep,
    SyncReadSessionDep,
)
from fastapi_dbpool.errors import conflict_of, error_responses

from ..models import User
from ..schemas import INT32_MAX, UserCreate, UserOut, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=INT32_MAX, description="The user's id")]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]

_TAKEN = "a user with this email already exists"
# The constraint behind _TAKEN: only its violation is answered with that message.
_EMAIL_UNIQUE = next(
    c
    for c in User.metadata.tables[User.__tablename__].constraints
    if isinstance(c, UniqueConstraint) and "email" in c.columns
)

# The hottest endpoints run on a direct connection: statements built once, with
# bindparam() for the values, compiled once and executed on the pooled driver connection.
_USER = select(User.__table__).where(User.id == bindparam("user_id"))
_CREATE = (
    insert(User)
    .values(name=bindparam("name"), email=bindparam("email"))
    .returning(*User.__table__.c)
)
_DELETE = delete(User).where(User.id == bindparam("user_id")).returning(User.id)


def _update(fields: frozenset[str]) -> Any:
    # A PATCH is one conditional statement: it changes the row if it is still there and
    # returns it, or matches nothing (deleted meanwhile: 404). Nothing is read first, so
    # there is nothing another request can change between a read and the write.
    return (
        update(User)
        .where(User.id == bindparam("user_id"))
        .values({field: bindparam(f"new_{field}") for field in fields})
        .returning(*User.__table__.c)
    )


_UPDATES = {
    fields: _update(fields)
    for fields in (frozenset({"name"}), frozenset({"email"}), frozenset({"name", "email"}))
}


# OpenAPI links from a created user to what can be done with it (clients and the
# fuzzer's stateful phase follow them). FastAPI's generated operation ids.
_GET = "get_user_users__user_id__get"
_PATCH = "update_user_users__user_id__patch"
_DELETE_OP = "delete_user_users__user_id__delete"


def _links(parameter: str, **operations: str) -> dict[str, Any]:
    return {
        name: {"operationId": operation_id, "parameters": {parameter: "$response.body#/id"}}
        for name, operation_id in operations.items()
    }


def _not_found(user_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")


def _email_taken(error: IntegrityError) -> HTTPException | None:
    """The 409 for a taken email; None for any other constraint (the library names it)."""
    conflict = conflict_of(error)
    if conflict is not None and conflict.on(_EMAIL_UNIQUE):
        return HTTPException(status.HTTP_409_CONFLICT, _TAKEN)
    return None


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses={
        201: {
            "links": _links("user_id", get_user=_GET, update_user=_PATCH, delete_user=_DELETE_OP)
        },
        **error_responses(400, 409, 413, 422, 503),
    },
)
async def create_user(body: UserCreate, db: ConnectionDep) -> dict[str, Any]:
    """Create a user; the email is stored normalised and must be unique."""
    try:
        # One statement, committed on its own (one round trip, no BEGIN/COMMIT): when it
        # returns, the row is there; when the email is taken, nothing was written.
        (user,) = await db.execute_committed(_CREATE, name=body.name, email=body.email)
    except IntegrityError as error:
        taken = _email_taken(error)
        if taken is None:
            raise
        raise taken from None
    return user


@router.get("", response_model=list[UserOut], responses=error_responses(422, 503))
async def list_users(session: ReadSessionDep, limit: Limit = 50, offset: Offset = 0) -> list[User]:
    """List users by id."""
    return list(await session.scalars(select(User).order_by(User.id).limit(limit).offset(offset)))


@router.get("/{user_id}", response_model=UserOut, responses=error_responses(404, 422, 503))
async def get_user(user_id: UserId, db: ReadConnectionDep) -> dict[str, Any]:
    """Read one user."""
    user = await db.one_or_none(_USER, user_id=user_id)
    if user is None:
        raise _not_found(user_id)
    return user


@router.get("/{user_id}/sync", response_model=UserOut, responses=error_responses(404, 422, 503))
def get_user_sync(user_id: UserId, session: SyncReadSessionDep) -> User:
    """Read one user from a sync ``def`` endpoint: the same answer as ``GET /users/{id}``."""
    user = session.get(User, user_id)
    if user is None:
        raise _not_found(user_id)
    return user


@router.patch(
    "/{user_id}", response_model=UserOut, responses=error_responses(400, 404, 409, 413, 422, 503)
)
async def update_user(user_id: UserId, body: UserUpdate, db: ConnectionDep) -> dict[str, Any]:
    """Change a user's name and/or email."""
    changes = body.changes()
    statement = _UPDATES[frozenset(changes)]
    params = {f"new_{field}": value for field, value in changes.items()}
    try:
        rows = await db.execute_committed(statement, user_id=user_id, **params)
    except IntegrityError as error:
        taken = _email_taken(error)
        if taken is None:
            raise
        raise taken from None
    if not rows:
        raise _not_found(user_id)
    return rows[0]


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 422, 503),
)
async def delete_user(user_id: UserId, db: ConnectionDep) -> None:
    """Delete a user and, by the foreign key's cascade, their items."""
    if not await db.execute_committed(_DELETE, user_id=user_id):
        raise _not_found(user_id)
