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
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.pool import NullPool

from workmesh.db import sqlite_pragmas
from workmesh.engine.log_sync import LogSync
from workmesh.services import task_rows
from workmesh.services.task_rows import TaskRow
from workmesh.settings import SqliteSynchronous

log = logging.getLogger(__name__)

Result = TypeVar("Result")


class TurnStore(Protocol):
    async def read(self, ids: set[str], keys: set[str]) -> list[TaskRow]: ...

    async def write(
        self, inserts: Sequence[TaskRow], updates: Sequence[TaskRow], now: datetime
    ) -> None: ...

    async def durable(self) -> None:
        """Return once every write so far is on disk (a turn publishes only then)."""
        ...

    async def close(self) -> None: ...


def turn_store(
    url: str,
    sessions: async_sessionmaker[AsyncSession],
    synchronous: SqliteSynchronous = SqliteSynchronous.FULL,
) -> TurnStore:
    parsed = make_url(url)
    in_memory = parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed)
    if parsed.get_backend_name() == "sqlite" and not in_memory:
        return SqliteLoopStore(str(parsed.set(drivername="sqlite")), synchronous)
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

    async def durable(self) -> None:
        return None  # the commit was: PostgreSQL syncs its log before it answers COMMIT

    async def close(self) -> None:
        return None


class SqliteLoopStore:
    """One SQLite connection of the store's own, used on the event loop, with SQLite's busy
    wait turned off.

    The statements are SQLAlchemy's, compiled once (workmesh/bulk.py); they run on the
    driver's connection itself. A turn is two calls of a fraction of a millisecond, and
    SQLAlchemy's Connection around them — a pool checkout, a transaction object, the BEGIN
    and COMMIT through its execution path — cost about as much as SQLite's own work.

    With ``synchronous=FULL`` configured, the commits on the loop do not sync; ``durable()``
    has a thread sync the log for them (workmesh/engine/log_sync.py).
    """

    def __init__(self, url: str, synchronous: SqliteSynchronous = SqliteSynchronous.FULL) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)
        self.synchronous = SqliteSynchronous(synchronous)
        self.log_sync: LogSync | None = None  # set with the driver connection, under FULL

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            _never_wait(dbapi_connection, synchronous)

        event.listen(self.engine, "connect", on_connect)
        self._driver: DriverConnection | None = None
        self._writes = 0  # since the last checkpoint began
        self._checkpointing: asyncio.Future[None] | None = None
        self._log_full = False  # set by the checkpoint's thread: turns wait for it to end

    @property
    def driver(self) -> DriverConnection:
        if self._driver is None:
            try:
                raw = self.engine.raw_connection()
            except sqlite3.Error as error:  # from the pragmas, when another writer holds on
                raise _as_sqlalchemy("connect", (), error) from error
            assert isinstance(raw.driver_connection, sqlite3.Connection)
            self._driver = DriverConnection(raw.driver_connection, self.engine.dialect, raw)
            self.log_sync = self._sync_off_the_loop(raw.driver_connection)
        return self._driver

    def _sync_off_the_loop(self, connection: sqlite3.Connection) -> LogSync | None:
        """Under FULL in WAL mode, commit without the sync and leave it to a LogSync.

        Outside WAL mode (a file system SQLite cannot share memory on) FULL stays as it is:
        there a commit's syncs cover the rollback journal and the database file, not one log.
        """
        if self.synchronous is not SqliteSynchronous.FULL:
            return None
        [(mode,)] = connection.execute("PRAGMA journal_mode").fetchall()
        if str(mode).lower() != "wal":
            return None
        databases = connection.execute("PRAGMA database_list").fetchall()
        path = next(file for _, name, file in databases if name == "main")
        connection.execute("PRAGMA synchronous=NORMAL")
        return LogSync(f"{path}-wal")

    async def read(self, ids: set[str], keys: set[str]) -> list[TaskRow]:
        # One SELECT outside a transaction is a consistent snapshot of its own.
        return await self._when_free(lambda: task_rows.read_rows(self.driver, ids, keys))

    async def write(
        self, inserts: Sequence[TaskRow], updates: Sequence[TaskRow], now: datetime
    ) -> None:
        def write() -> None:
            with self.driver.transaction():
                task_rows.write_rows(self.driver, inserts, updates, now)

        if self._log_full and self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])
        await self._when_free(write)
        if self.log_sync is not None:
            self.log_sync.committed()
        self._writes += 1
        if self._writes >= CHECKPOINT_WRITES and self._checkpointing is None:
            self._writes = 0
            loop = asyncio.get_running_loop()
            self._checkpointing = loop.run_in_executor(None, self._checkpoint)
            self._checkpointing.add_done_callback(self._checkpointed)

    def _checkpoint(self) -> None:
        """Copy what the write-ahead log holds into the database file, in a thread: it writes
        and syncs megabytes, which on the loop stalled everything for ~5 ms twice a second at
        200 tasks/s.

        PASSIVE first: it never waits for, nor blocks, a reader or a writer, so turns go on
        meanwhile. But the log starts over only after a checkpoint that caught up with it, and
        turns writing back to back (a long burst) may never let one. Past
        ``CHECKPOINT_LOG_LIMIT`` frames, turns wait (on the loop, in ``write``) for a RESTART
        checkpoint that copies the log whole, so that it can start over. They must stop
        themselves: SQLite's busy wait would poll for their lock between two of them forever.
        """
        connection = self.engine.raw_connection()
        try:
            driver = connection.driver_connection
            assert isinstance(driver, sqlite3.Connection)
            [(_, in_log, _)] = driver.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            if in_log > CHECKPOINT_LOG_LIMIT:
                self._log_full = True
                driver.execute(f"PRAGMA busy_timeout={int(CHECKPOINT_RESTART_WAIT * 1000)}")
                driver.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        finally:
            self._log_full = False
            connection.close()

    def _checkpointed(self, done: asyncio.Future[None]) -> None:
        self._checkpointing = None
        if not done.cancelled() and done.exception() is not None:
            # The next one tries again; the log only grows meanwhile.
            log.warning("SQLite checkpoint failed: %r", done.exception())

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

    async def durable(self) -> None:
        if self.log_sync is not None:
            await self.log_sync.durable()

    async def close(self) -> None:
        if self._checkpointing is not None:
            await asyncio.wait([self._checkpointing])
        if self.log_sync is not None:
            await self.log_sync.close()
            self.log_sync = None
        if self._driver is not None:
            self._driver.close()
            self._driver = None
        self.engine.dispose()


class DriverConnection:
    """Just what workmesh/services/task_rows.py asks of a connection, on a sqlite3 connection
    in autocommit mode: the dialect, statements in the driver's own form, and a transaction
    that takes the write lock first (``BEGIN IMMEDIATE``), so that a busy database fails it
    before it has done anything, never halfway. Driver errors come out as SQLAlchemy's."""

    def __init__(self, connection: sqlite3.Connection, dialect: Dialect, closer: Any) -> None:
        self.connection = connection
        self.dialect = dialect
        self._closer = closer

    def exec_driver_sql(self, sql: str, parameters: Any) -> sqlite3.Cursor:
        try:
            if isinstance(parameters, list):
                return self.connection.executemany(sql, parameters)
            return self.connection.execute(sql, parameters)
        except sqlite3.Error as error:
            raise _as_sqlalchemy(sql, parameters, error) from error

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.exec_driver_sql("BEGIN IMMEDIATE", ())
        try:
            yield
        except BaseException:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK")
            raise
        self.exec_driver_sql("COMMIT", ())

    def close(self) -> None:
        self._closer.close()


def _as_sqlalchemy(sql: str, parameters: Any, error: sqlite3.Error) -> StatementError:
    return DBAPIError.instance(sql, parameters, error, sqlite3.Error)


# How long a turn waits for another writer's lock in all (as busy_timeout does elsewhere,
# workmesh/db.py), and the pauses between tries.
BUSY_TIMEOUT = 10.0
BUSY_FIRST_PAUSE = 0.0005
BUSY_LONGEST_PAUSE = 0.002
# Turns never checkpoint SQLite's write-ahead log themselves (wal_autocheckpoint=0 on their
# connection); the store has a thread do it after this many writes. A turn writes a few pages
# per task, so that is about SQLite's own cadence (every 1000 pages).
CHECKPOINT_WRITES = 100
CHECKPOINT_LOG_LIMIT = 4000  # frames (pages) in the log: 16 MB
# How long that RESTART may wait for another process's reader to let go of the log (turns wait
# meanwhile); past it the checkpoint gives up, turns go on, and a later one tries again.
CHECKPOINT_RESTART_WAIT = 1.0


def _never_wait(dbapi_connection: Any, synchronous: SqliteSynchronous) -> None:
    sqlite_pragmas(dbapi_connection, synchronous)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    cursor.execute("PRAGMA wal_autocheckpoint=0")  # SqliteLoopStore._checkpoint does it
    cursor.close()
    # The driver's own transaction handling off: DriverConnection.transaction begins them.
    dbapi_connection.isolation_level = None


def _is_busy(error: OperationalError) -> bool:
    code = getattr(error.orig, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
