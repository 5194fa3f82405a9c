"""fastapi_dbpool: a correct, fast, observable SQLAlchemy pool and session layer for FastAPI."""

from ._pool import PoolSnapshot
from .database import Database
from .dependencies import (
    DatabaseDep,
    ReadSessionDep,
    SessionDep,
    get_database,
    get_read_session,
    get_session,
)
from .errors import (
    ConnectFailed,
    DatabaseNotStarted,
    DatabaseUnavailable,
    DBPoolError,
    PoolTimeout,
    SettingsError,
    StatementTimeout,
    TooManyWaiting,
    WriteInReadSession,
)
from .health import HealthReport, check_readiness, health_router
from .settings import DatabaseSettings, redact_url
from .sync import (
    SyncDatabase,
    SyncReadSessionDep,
    SyncSessionDep,
    SyncSessionRoute,
    get_sync_read_session,
    get_sync_session,
)

__all__ = [
    "ConnectFailed",
    "DBPoolError",
    "Database",
    "DatabaseDep",
    "DatabaseNotStarted",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "HealthReport",
    "PoolSnapshot",
    "PoolTimeout",
    "ReadSessionDep",
    "SessionDep",
    "SettingsError",
    "StatementTimeout",
    "SyncDatabase",
    "SyncReadSessionDep",
    "SyncSessionDep",
    "SyncSessionRoute",
    "TooManyWaiting",
    "WriteInReadSession",
    "check_readiness",
    "get_database",
    "get_read_session",
    "get_session",
    "get_sync_read_session",
    "get_sync_session",
    "health_router",
    "redact_url",
]
