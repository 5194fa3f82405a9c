"""Rows for load tests and bench scripts, written through a short-lived sync engine."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from fastapi_dbpool import DatabaseSettings
from users_api.models import Item, User


def seed_user_with_items(url: str, *, items: int) -> int:
    """Add one user with *items* items to the migrated database *url*; return the user's id."""
    engine = create_engine(DatabaseSettings(url=url).sync_url)
    try:
        with Session(engine) as session, session.begin():
            user = User(name="Load", email="load@example.com")
            session.add(user)
            session.flush()
            session.add_all(Item(owner_id=user.id, title=f"item {n}") for n in range(items))
            return user.id
    finally:
        engine.dispose()
