"""Issue 9's reproductions on /users: a failure at COMMIT is answered by its class, not 500.

A deferred constraint trigger on ``users`` raises, at COMMIT, the SQLSTATE that the
one-row table ``dbpool_fault_config`` names (PostgreSQL). On SQLite a trigger can only
abort the statement: an integrity error, which must not be answered with the email
message either.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psycopg
import pytest

from tests.backends import libpq_url

TAKEN = "a user with this email already exists"

_PG_SETUP = """
CREATE TABLE dbpool_fault_config (code text);
INSERT INTO dbpool_fault_config VALUES (NULL);
CREATE FUNCTION dbpool_users_fault() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE wanted text;
BEGIN
    SELECT code INTO wanted FROM dbpool_fault_config;
    IF wanted IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = wanted, MESSAGE = 'injected fault';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER dbpool_users_fault AFTER INSERT OR UPDATE ON users
DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dbpool_users_fault();
"""
_PG_TEARDOWN = """
DROP TRIGGER IF EXISTS dbpool_users_fault ON users;
DROP FUNCTION IF EXISTS dbpool_users_fault();
DROP TABLE IF EXISTS dbpool_fault_config;
"""


@pytest.fixture
def inject(database_url: str, backend: str) -> Iterator[object]:
    """Return set(code): from now on, every write to users fails at COMMIT with *code*."""
    if backend != "postgres":
        yield None
        return
    url = libpq_url(database_url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_PG_SETUP)

    def set_code(code: str | None) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE dbpool_fault_config SET code = %s", (code,))

    try:
        yield set_code
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_PG_TEARDOWN)


COMMIT_FAULTS = [
    ("40001", 503, "serialization_failure"),
    ("40P01", 503, "deadlock_detected"),
    ("53100", 503, "insufficient_resources"),
    ("P0001", 409, "raise_exception"),
    ("23514", 409, "check_violation"),
]


@pytest.mark.postgres_only
@pytest.mark.parametrize(("sqlstate", "status", "code"), COMMIT_FAULTS)
async def test_failure_at_commit_of_create_and_patch(
    client: httpx.AsyncClient, backend: str, inject, sqlstate: str, status: int, code: str
) -> None:
    user = (await client.post("/users", json={"name": "A", "email": "a@x.com"})).json()
    inject(sqlstate)
    created = await client.post("/users", json={"name": "B", "email": "b@x.com"})
    patched = await client.patch(f"/users/{user['id']}", json={"name": "C"})
    inject(None)
    for response in (created, patched):
        assert response.status_code == status, response.text
        assert response.json()["code"] == code
        assert TAKEN not in response.text  # the email message is for its own constraint
        if status == 503:
            assert int(response.headers["retry-after"]) >= 1
    # Nothing of either was committed.
    users = (await client.get("/users")).json()
    assert [(u["name"], u["email"]) for u in users] == [("A", "a@x.com")]


@pytest.mark.sqlite_only  # PostgreSQL: the 23514 case above
async def test_other_constraint_is_not_the_email_message(
    client: httpx.AsyncClient, backend: str, database_url: str
) -> None:
    import sqlite3

    from fastapi_dbpool import DatabaseSettings

    path = DatabaseSettings(url=database_url).sqlalchemy_url.database
    assert path is not None
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TRIGGER dbpool_users_refuse BEFORE UPDATE ON users "
            "WHEN NEW.name = 'refused' BEGIN SELECT RAISE(ABORT, 'refused by a rule'); END"
        )
    try:
        user = (await client.post("/users", json={"name": "A", "email": "a@x.com"})).json()
        response = await client.patch(f"/users/{user['id']}", json={"name": "refused"})
        assert response.status_code == 409, response.text
        assert response.json()["code"] == "integrity_error"
        assert TAKEN not in response.text
        taken = await client.post("/users", json={"name": "B", "email": "a@x.com"})
        assert taken.status_code == 409 and taken.json()["detail"] == TAKEN
    finally:
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER dbpool_users_refuse")
