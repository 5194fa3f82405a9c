"""fastapi_dbpool: a correct, fast, observable SQLAlchemy pool and session layer for FastAPI.

The public API is what this module exports, plus :mod:`fastapi_dbpool.errors` (the
error classes) and :mod:`fastapi_dbpool.testing`. Everything else (the subpackages
``request``, ``pool``, ``sqlite``, ``postgres``, ``observe``, ``ops``, ``cli``) is
implementation and may change between releases.

Which handle to use when:

=====================================  =================================================
need                                   use
=====================================  =================================================
a request that reads and writes (ORM)  ``SessionDep``
a request that only reads (ORM)        ``ReadSessionDep`` (replica when configured)
a hot endpoint, Core statements        ``ConnectionDep`` / ``ReadConnectionDep``
a ``def`` endpoint                     ``SyncSessionDep`` / ``SyncReadSessionDep``
background work, scripts, workers      ``database.session()`` / ``database.connection()``
the Database itself in a handler       ``DatabaseDep``
=====================================  =================================================
"""

from .database import Database, DatabaseDep
from .errors import DBPoolError
from .observe.health import health_router
from .observe.install import install_metrics
from .observe.logs import configure_logging
from .pool.monitor import PoolSnapshot
from .request.dependencies import ConnectionDep, ReadConnectionDep, ReadSessionDep, SessionDep
from .request.direct import DirectConnection
from .request.sync import SyncReadSessionDep, SyncSessionDep
from .settings import DatabaseSettings

__all__ = [
    "ConnectionDep",
    "DBPoolError",
    "Database",
    "DatabaseDep",
    "DatabaseSettings",
    "DirectConnection",
    "PoolSnapshot",
    "ReadConnectionDep",
    "ReadSessionDep",
    "SessionDep",
    "SyncReadSessionDep",
    "SyncSessionDep",
    "configure_logging",
    "health_router",
    "install_metrics",
]
