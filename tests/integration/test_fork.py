"""An engine inherited across a fork is refused, with a message that says what to do.

Pooled connections are sockets; a forked child that used its parent's would interleave
its bytes with the parent's on the same server session. Each worker must start its own
engine after the fork, which ``Database.install(app)`` does in the lifespan.
"""

from __future__ import annotations

import os

from sqlalchemy import text

from fastapi_dbpool import Database, DatabaseSettings
from fastapi_dbpool.errors import InheritedAcrossFork


def in_child(database: Database) -> str:
    """What the forked child gets when it touches *database*: each error's message."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once, running nothing of pytest's
        try:
            messages = []
            for use in (lambda: database.engine, lambda: database.start().send(None)):
                try:
                    use()
                    messages.append("no error")
                except InheritedAcrossFork as error:
                    messages.append(f"InheritedAcrossFork: {error}")
            os.write(write, "\n".join(messages).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = pipe.read()
    os.waitpid(pid, 0)
    return report


async def test_engine_inherited_across_fork_is_refused(settings: DatabaseSettings) -> None:
    async with Database(settings) as database:
        async with database.session() as session:
            await session.execute(text("SELECT 1"))  # a pooled connection exists
        report = in_child(database)
        engine_use, start = report.splitlines()
        assert engine_use.startswith(
            "InheritedAcrossFork: database 'primary' was started in process"
        )
        assert "a fork of it" in engine_use and "Database.install(app)" in engine_use
        assert start.startswith("InheritedAcrossFork:"), report
        # The parent's engine is untouched by the child.
        async with database.session() as session:
            assert (await session.execute(text("SELECT 1"))).scalar() == 1
