"""The users_api ASGI app: ``users_api.main:app``, or ``create_app()`` for a custom one."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from fastapi_dbpool import (
    Database,
    DatabaseSettings,
    configure_logging,
    health_router,
    install_metrics,
)

from .config import database_settings, json_logs
from .processing import resume_stranded
from .routes import items, users

logger = logging.getLogger("users_api")

# Largest request body accepted; the biggest valid one (an item) is about 41 kB.
MAX_BODY_BYTES = 256 * 1024


def create_app(
    settings: DatabaseSettings | None = None, *, freeze_startup_heap: bool = False
) -> FastAPI:
    """Build the app; the database settings come from the environment when omitted.

    Args:
        settings: The database settings; from the environment when omitted.
        freeze_startup_heap: Once started, move every object that exists then out of
            the garbage collector's reach (``gc.freeze()``), for a server process. Off
            for apps built in tests, where it would hide leaked objects from
            ``gc.collect()``.
    """
    database = Database(settings if settings is not None else database_settings())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The database is started by Database.install around this function.
        if freeze_startup_heap:
            # What exists now (SQLAlchemy metadata, routes, validators) lives as long as
            # the process: freeze it, so that full collections stop scanning it (they
            # took ~90 ms each, a third of the collector's time under load; see
            # bench/NOTES.md).
            gc.collect()
            gc.freeze()
        resume = asyncio.create_task(_resume(database))
        try:
            yield
        finally:
            resume.cancel()
            with suppress(asyncio.CancelledError):
                await resume

    app = FastAPI(
        title="users_api",
        summary="Users and their items, processed in the background: the fastapi_dbpool reference.",
        version="0.1.0",
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )
    database.install(app)
    app.include_router(users.router)
    app.include_router(items.router)
    app.include_router(health_router())
    install_metrics(app)  # GET /metrics and the /pool dashboard; DB_METRICS=false: neither
    if json_logs():  # DB_LOG_JSON: one JSON object a line; otherwise the server's logging
        configure_logging(as_json=True, loggers=("fastapi_dbpool", "users_api"))
    return app


async def _resume(database: Database) -> None:
    try:
        await resume_stranded(database)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        # The database may be down at start-up; stranded items wait for the next start.
        logger.warning("could not resume stranded items: %s", type(error).__name__)


app = create_app(freeze_startup_heap=True)
