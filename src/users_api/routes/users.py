"""``/users``: create, read, list, update, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from fastapi_dbpool import (
    ConnectionDep,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    SyncReadSessionDep,
)

from ..models import User
from ..schemas import INT32_MAX, UserCreate, UserOut, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])

UserId = Annotated[int, Path(ge=1, le=INT32_MAX, description="The user's id")]
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=INT32_MAX)]

_TAKEN = "a user with this email already exists"

# The hottest endpoints run on a direct connection: statements built once, with
# bindparam() for the values, compiled once and executed on the pooled driver connection.
_USER = select(User.__table__).where(User.id == bindparam("user_id"))
_CREATE = (
    insert(User)
    .values(name=bindparam("name"), email=bindparam("email"))
    .returning(*User.__table__.c)
)


def _not_found(user_id: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses={409: {"description": _TAKEN}},
)
async def create_user(body: UserCreate, db: ConnectionDep) -> dict[str, Any]:
    """Create a user; the email is stored normalised and must be unique."""
    try:
        # One statement, committed on its own (one round trip, no BEGIN/COMMIT): when it
        # returns, the row is there; when the email is taken, nothing was written.
        (user,) = await db.execute_committed(_CREATE, name=body.name, email=body.email)
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, _TAKEN) from None
    return user


@router.get("", response_model=list[UserOut])
async def list_users(session: ReadSessionDep, limit: Limit = 50, offset: Offset = 0) -> list[User]:
    """List users by id."""
    return list(await session.scalars(select(User).order_by(User.id).limit(limit).offset(offset)))


@router.get("/{user_id}", response_model=UserOut)
async def get_user(user_id: UserId, db: ReadConnectionDep) -> dict[str, Any]:
    """Read one user."""
    user = await db.one_or_none(_USER, user_id=user_id)
    if user is None:
        raise _not_found(user_id)
    return user


@router.get("/{user_id}/sync", response_model=UserOut)
def get_user_sync(user_id: UserId, session: SyncReadSessionDep) -> User:
    """Read one user from a sync ``def`` endpoint: the same answer as ``GET /users/{id}``."""
    user = session.get(User, user_id)
    if user is None:
        raise _not_found(user_id)
    return user


@router.patch("/{user_id}", response_model=UserOut, responses={409: {"description": _TAKEN}})
async def update_user(user_id: UserId, body: UserUpdate, session: SessionDep) -> User:
    """Change a user's name and/or email."""
    user = await session.get(User, user_id)
    if user is None:
        raise _not_found(user_id)
    for field, value in body.changes().items():
        setattr(user, field, value)
    try:
        await session.flush()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, _TAKEN) from None
    return user


@router.delete("/{user_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
async def delete_user(user_id: UserId, session: SessionDep) -> None:
    """Delete a user and, by the foreign key's cascade, their items."""
    deleted = await session.scalar(delete(User).where(User.id == user_id).returning(User.id))
    if deleted is None:
        raise _not_found(user_id)
