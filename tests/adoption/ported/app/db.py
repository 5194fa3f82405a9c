import os
from collections.abc import Generator
from typing import Annotated

from fastapi import Depends
from fastapi_dbpool import Database, install_metrics
from fastapi_dbpool.sqlmodel import SyncSessionDep
from sqlmodel import Session, create_engine

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./heroes.db")

database = Database(url=DATABASE_URL)  # DB_POOL_SIZE, DB_MAX_OVERFLOW, ...
engine = database.sync.engine  # the one sync engine: scripts, tests and requests


def get_db() -> Generator[Session, None, None]:
    with Session(engine) as session:
        yield session


SessionDep = SyncSessionDep  # get_db() deadlocks the threadpool under load; this cannot
