"""fastapi_dbpool: a correct, fast, observable SQLAlchemy pool and session layer for FastAPI."""

from ._direct import DirectConnection
from ._pool import PoolSnapshot
from .dashboard import PoolDashboard, install_dashboard
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
    TransactionOpen,
    WriteInReadSession,
)
from .health import HealthReport, check_readiness, health_router
from .logs import configure_logging
from .metrics import Metrics, install_metrics
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
    "ConnectionDep",
    "DBPoolError",
    "Database",
    "DatabaseDep",
    "DatabaseNotStarted",
    "DatabaseSettings",
    "DatabaseUnavailable",
    "DirectConnection",
    "HealthReport",
    "Metrics",
    "PoolDashboard",
    "PoolSnapshot",
    "PoolTimeout",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "SettingsError",
    "StatementTimeout",
    "SyncDatabase",
    "SyncReadSessionDep",
    "SyncSessionDep",
    "SyncSessionRoute",
    "TooManyWaiting",
    "TransactionOpen",
    "WriteInReadSession",
    "check_readiness",
    "configure_logging",
    "get_connection",
    "get_database",
    "get_read_connection",
    "get_read_session",
    "get_session",
    "get_sync_read_session",
    "get_sync_session",
    "health_router",
    "install_dashboard",
    "install_metrics",
    "redact_url",
]
