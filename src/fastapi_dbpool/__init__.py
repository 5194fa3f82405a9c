"""fastapi_dbpool: a correct, fast, observable SQLAlchemy pool and session layer for FastAPI."""

from ._direct import DirectConnection
from ._pool import PoolSnapshot
from .database import Database
from .dependencies import (
    ConnectionDep,
    DatabaseDep,
    ReadConnectionDep,
    ReadSessionDep,
    SessionDep,
    get_connection,
    get_database,
    get_read_connection,
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

__all__ = [
    "ConnectFailed",
    "ConnectionDep",
    "DBPoolError",
    "Database",
    "DatabaseDep",
    "DatabaseNotStarted",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "DirectConnection",
    "HealthReport",
    "PoolSnapshot",
    "PoolTimeout",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "SettingsError",
    "StatementTimeout",
    "TooManyWaiting",
    "WriteInReadSession",
    "check_readiness",
    "get_connection",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
    "health_router",
    "redact_url",
]
