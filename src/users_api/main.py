"""The users_api ASGI app: ``users_api.main:app``, or ``create_app()`` for a custom one."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fastapi_dbpool import (
    Database,
    DatabaseSettings,
    configure_logging,
    health_router,
    install_metrics,
)

from . import item_queue
from .body_limit import BodyLimit
from .config import database_settings, json_logs
from .item_metrics import ItemMetrics, StatusRefresher
from .routes import items, users
from .settings import ItemSettings
from .worker import ItemWorkers, has_free_connection

# Largest request body accepted; the biggest valid one (an item) is about 41 kB.
MAX_BODY_BYTES = 256 * 1024


def create_app(
    settings: DatabaseSettings | None = None,
    *,
    item_settings: ItemSettings | None = None,
    freeze_startup_heap: bool = False,
) -> FastAPI:
    """Build the app; the settings come from the environment when omitted.

    Args:
        settings: The database settings; from the environment when omitted.
        item_settings: The ITEM_* settings of item processing; from the environment
            when omitted.
        freeze_startup_heap: Once started, move every object that exists then out of
            the garbage collector's reach (``gc.freeze()``), for a server process. Off
            for apps built in tests, where it would hide leaked objects from
            ``gc.collect()``.
    """
    database = Database(settings if settings is not None else database_settings())
    item_settings = item_settings if item_settings is not None else ItemSettings.from_env()

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
        # Nothing to reset at start-up: items left by a process that died are
        # claimed again when their lease runs out, by this instance or another.
        workers: ItemWorkers = app.state.item_workers
        async with workers.run():
            yield

    app = FastAPI(
        title="users_api",
        summary="Users and their items, processed in the background: the fastapi_dbpool reference.",
        version="0.1.0",
        lifespan=lifespan,
    )
    database.install(app)
    # A body too large never reaches the routes (the metrics layer, added later and so
    # outside it, still counts the 413).
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.include_router(users.router)
    app.include_router(items.router)
    app.include_router(health_router())
    metrics = install_metrics(
        app
    )  # GET /metrics and the /pool dashboard; DB_METRICS=false: neither
    item_metrics = ItemMetrics(
        metrics.registry if metrics is not None else None,
        multiprocess=metrics is not None and metrics.multiprocess_dir is not None,
    )
    if metrics is not None:
        metrics.before_scrape(
            StatusRefresher(
                metrics=item_metrics,
                read=lambda: item_queue.count_by_status(database),
                # Never take a connection a request is waiting for: keep the last counts.
                can_read=lambda: has_free_connection(database),
            )
        )
    app.state.item_workers = ItemWorkers(database, item_settings, item_metrics)
    if json_logs():  # DB_LOG_JSON: one JSON object a line; otherwise the server's logging
        configure_logging(as_json=True, loggers=("fastapi_dbpool", "users_api"))
    return app


app = create_app(freeze_startup_heap=True)
