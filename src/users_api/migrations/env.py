"""Alembic environment: the app's own Database, on the database DATABASE_URL names.

``with Database(...)`` starts the sync engine alone (no event loop, no async pool), with
the same settings, pragmas and statement timeout as the app; migrations take one
connection and the pool is disposed when they end. The URL comes from the same
settings the app reads (or from ``config.attributes["connection"]`` /
``sqlalchemy.url`` when a caller provides one).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fastapi_dbpool import Database
from users_api.config import database_settings
from users_api.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    settings = database_settings(config.get_main_option("sqlalchemy.url"))
    return settings.sqlalchemy_url.render_as_string(hide_password=False)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def _run_with_database() -> None:
    database = Database(database_settings(config.get_main_option("sqlalchemy.url")))
    with database, database.sync.engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.dbapi_connection
        assert raw is not None, "a checked-out connection has its driver connection"
        if sqlite:
            # Off while migrating, as Alembic's batch mode needs: copying a table drops
            # the old one, and with foreign keys on, dropping ``users`` would first delete
            # every row of ``items`` by the ON DELETE CASCADE. PRAGMA foreign_keys cannot
            # change inside a transaction: set it on the driver's connection, before any.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            _run(connection)
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"migration left {len(broken)} dangling foreign key(s)")
            connection.commit()
        finally:
            if sqlite:
                connection.rollback()
                raw.execute("PRAGMA foreign_keys=ON")


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)  # a caller (tests) handed us a sync connection
    else:
        _run_with_database()
