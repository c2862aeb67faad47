"""Where a leader turn reads and writes its task rows.

A turn makes two calls: one read of every task it names, and one transaction that inserts the
new tasks and writes the changed ones (workmesh/services/task_rows.py). Between them the turn
plans; the version check on every update catches a change anyone made meanwhile (section 12 of
docs/design.md).

On SQLite both calls run right on the event loop, on a synchronous connection that never waits
for a lock. Such a call takes a fraction of a millisecond, less than a trip to another thread:
through aiosqlite every statement, cursor and commit crosses to the driver's thread and back
through the loop (about nine crossings for a small turn), and a thread of our own must win the
GIL from a busy loop at each crossing. What SQLite makes wait is the lock another writer
holds (the API, maybe in this very process): there the call fails at once, and the store sleeps
on the loop — which lets that writer finish — and tries again. On PostgreSQL asyncpg speaks to
the server without a thread, so the calls run on the async engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.db import sqlite_pragmas
from workmesh.services import task_rows
from workmesh.services.task_rows import TaskRow

Result = TypeVar("Result")


class TurnStore(Protocol):
    async def read(self, ids: set[str], keys: set[str]) -> list[TaskRow]: ...

    async def write(
        self, inserts: Sequence[TaskRow], updates: Sequence[TaskRow], now: datetime
    ) -> None: ...

    async def close(self) -> None: ...


def turn_store(url: str, sessions: async_sessionmaker[AsyncSession]) -> TurnStore:
    parsed = make_url(url)
    in_memory = parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed)
    if parsed.get_backend_name() == "sqlite" and not in_memory:
        return SqliteLoopStore(str(parsed.set(drivername="sqlite")))
    return SessionStore(sessions)


class SessionStore:
    """Through the async engine: PostgreSQL, and SQLite in memory (a second engine would see
    a database of its own)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def read(self, ids: set[str], keys: set[str]) -> list[TaskRow]:
        async with self.sessions() as session:
            return await session.run_sync(
                lambda sync: task_rows.read_rows(sync.connection(), ids, keys)
            )

    async def write(
        self, inserts: Sequence[TaskRow], updates: Sequence[TaskRow], now: datetime
    ) -> None:
        async with self.sessions() as session, session.begin():
            await session.run_sync(
                lambda sync: task_rows.write_rows(sync.connection(), inserts, updates, now)
            )

    async def close(self) -> None:
        return None


class SqliteLoopStore:
    """A synchronous engine used on the event loop, with SQLite's own busy wait turned off."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url)
        event.listen(self.engine, "connect", _never_wait)
        event.listen(self.engine, "begin", _begin)
        # BEGIN IMMEDIATE for writes: take the write lock first, so that a busy database fails
        # the transaction before it has done anything, never halfway.
        self.immediate = self.engine.execution_options(begin="BEGIN IMMEDIATE")

    async def read(self, ids: set[str], keys: set[str]) -> list[TaskRow]:
        def read() -> list[TaskRow]:
            with self.engine.begin() as connection:
                return task_rows.read_rows(connection, ids, keys)

        return await self._when_free(read)

    async def write(
        self, inserts: Sequence[TaskRow], updates: Sequence[TaskRow], now: datetime
    ) -> None:
        def write() -> None:
            with self.immediate.begin() as connection:
                task_rows.write_rows(connection, inserts, updates, now)

        await self._when_free(write)

    async def _when_free(self, work: Callable[[], Result]) -> Result:
        """Run ``work``; while the database is locked, sleep on the loop and try again."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        pause = BUSY_FIRST_PAUSE
        while True:
            try:
                return work()
            except OperationalError as error:
                if not _is_busy(error) or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, BUSY_LONGEST_PAUSE)

    async def close(self) -> None:
        self.engine.dispose()


# How long a turn waits for another writer's lock in all (as busy_timeout does elsewhere,
# workmesh/db.py), and the pauses between tries.
BUSY_TIMEOUT = 10.0
BUSY_FIRST_PAUSE = 0.0005
BUSY_LONGEST_PAUSE = 0.002


def _never_wait(dbapi_connection: Any, record: Any) -> None:
    sqlite_pragmas(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.close()
    # The driver's own transaction handling off: _begin says how each transaction begins.
    dbapi_connection.isolation_level = None


def _begin(connection: Connection) -> None:
    connection.exec_driver_sql(connection.get_execution_options().get("begin", "BEGIN"))


def _is_busy(error: OperationalError) -> bool:
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
