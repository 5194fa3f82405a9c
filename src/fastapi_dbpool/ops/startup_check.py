"""The connection budget, checked in the background when the app starts on PostgreSQL.

Start-up must not wait for the database, nor fail because of it: the check runs as a
task of its own, gives up after ``DB_CONNECT_TIMEOUT`` plus a short query allowance, and
only logs. When the budget does not fit it logs ONE warning (logger ``fastapi_dbpool``,
``event="budget_exceeded"``) with the numbers as structured fields. :meth:`Database.stop`
cancels it and waits for it, so no task outlives the app.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import ConnectFailed, SettingsError
from .budget import ConnectionBudget, connection_budget, inspect_server, workers_from_env
from .facts import QUERY_TIMEOUT

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["cancel_budget_check", "check_budget", "schedule_budget_check"]

logger = logging.getLogger("fastapi_dbpool")


def schedule_budget_check(database: Database) -> asyncio.Task[None] | None:
    """Start :func:`check_budget` in a task on PostgreSQL; None on SQLite."""
    if database.settings.backend != "postgresql":
        return None

    async def run() -> None:
        await check_budget(database)

    return asyncio.create_task(run(), name=f"fastapi_dbpool budget check ({database.name})")


async def cancel_budget_check(task: asyncio.Task[None] | None) -> None:
    """Cancel *task* if it still runs and wait until it has ended."""
    if task is None:
        return
    task.cancel()
    # wait() and not `await task`: the task's CancelledError is not ours to raise.
    await asyncio.wait([task])


async def check_budget(database: Database, workers: int | None = None) -> ConnectionBudget | None:
    """Compare the app's connections with the server's free slots and log the outcome.

    Args:
        database: The app's database; its settings give the pool size and timeouts.
        workers: Worker processes of the app; ``WEB_CONCURRENCY`` (else 1) when omitted.

    Returns:
        The budget, or None when it could not be computed (database unreachable, a
        pooler in front, invalid WEB_CONCURRENCY). Never raises, except CancelledError.
    """
    settings = database.settings
    fields: dict[str, object] = {"pool": database.name, "event": "budget_check"}
    try:
        if workers is None:
            workers = workers_from_env()
        async with asyncio.timeout(settings.connect_timeout + QUERY_TIMEOUT):
            facts = await inspect_server(database, purpose="startup-check")
    except (ConnectFailed, SettingsError) as error:
        logger.debug("connection budget not checked: %s", error, extra=fields)
        return None
    except TimeoutError:
        logger.debug(
            "connection budget not checked: no answer within %g s (DB_CONNECT_TIMEOUT)",
            settings.connect_timeout + QUERY_TIMEOUT,
            extra=fields,
        )
        return None
    except Exception as error:  # a check must never take the app down; say what it was
        logger.warning("connection budget not checked: %s", type(error).__name__, extra=fields)
        return None
    budget = connection_budget(settings, facts, workers, pools=database.pools_in_use)
    if budget is None:
        logger.debug(
            "connection budget not checked: a connection pooler is in front of the server",
            extra=fields | {"pooler": facts.pooler.product if facts.pooler else None},
        )
        return None
    numbers = fields | budget.as_dict()
    if budget.fits:
        logger.debug("connection budget fits: %s", budget.describe(), extra=numbers)
    else:
        logger.warning(
            "connection budget exceeds the server's free connections: %s; lower DB_POOL_SIZE,"
            " DB_MAX_OVERFLOW or WEB_CONCURRENCY, or raise max_connections"
            " (`dbpool doctor` recommends a size)",
            budget.describe(),
            extra=numbers | {"event": "budget_exceeded"},
        )
    return budget
