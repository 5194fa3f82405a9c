"""Where users_api's database is: DATABASE_URL, or a SQLite file beside the process."""

from __future__ import annotations

import os

from pydantic import TypeAdapter

from fastapi_dbpool import DatabaseSettings

# The service's own default, so that `make run` works with nothing installed; the
# library has none (a missing DATABASE_URL is an error there).
DEFAULT_DATABASE_URL = "sqlite:///./users_api.db"


def database_settings(url: str | None = None) -> DatabaseSettings:
    """The service's database settings: *url*, else DATABASE_URL, else ./users_api.db."""
    chosen = url or os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    return DatabaseSettings.from_env(url=chosen)


def json_logs() -> bool:
    """True when DB_LOG_JSON asks for JSON log lines (the service then configures logging)."""
    return TypeAdapter(bool).validate_python(os.environ.get("DB_LOG_JSON") or "false")
