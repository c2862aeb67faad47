"""The store a leader turn reads and writes its task rows through (workmesh/engine/store.py),
on SQLite and PostgreSQL: the round trip, the races it must report, and on SQLite that a
locked database makes a turn wait without stopping the event loop."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm.exc import StaleDataError

from models.base import utcnow
from workmesh.db import create_engine, migrate, session_factory
from workmesh.engine import log_sync
from workmesh.engine import store as store_module
from workmesh.engine.store import SessionStore, SqliteLoopStore, TurnStore, turn_store
from workmesh.services.task_rows import TaskRow
from workmesh.settings import DatabaseSettings, SqliteSynchronous


def new_task(key: str | None = None) -> TaskRow:
    return TaskRow(
        id=str(uuid.uuid4()),
        kind="job",
        payload={"n": 1},
        priority=3,
        status="queued",
        idempotency_key=key,
        worker_id=None,
        attempt=1,
        max_attempts=3,
        rejected_by=None,
        error=None,
        assigned_at=None,
        finished_at=None,
        version=1,
        submitted_by="test",
    )


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[TurnStore]:
    engine = create_engine(DatabaseSettings(url=database_url))
    made = turn_store(database_url, session_factory(engine))
    yield made
    await made.close()
    await engine.dispose()


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> AsyncIterator[tuple[str, SqliteLoopStore]]:
    path = tmp_path / "workmesh.db"
    await asyncio.to_thread(migrate, f"sqlite+aiosqlite:///{path}")
    made = SqliteLoopStore(f"sqlite:///{path}")
    yield str(path), made
    await made.close()


async def test_the_store_fits_the_database(database_url: str, store: TurnStore) -> None:
    expected = SqliteLoopStore if database_url.startswith("sqlite") else SessionStore
    assert isinstance(store, expected)


async def test_rows_written_are_read_back_by_id_and_by_key(store: TurnStore) -> None:
    plain, keyed = new_task(), new_task(key="order-17")
    await store.write([plain, keyed], [], utcnow())

    [by_id] = await store.read({plain.id}, set())
    [by_key] = await store.read(set(), {"order-17"})
    assert (by_id.id, by_id.payload, by_id.priority) == (plain.id, {"n": 1}, 3)
    assert by_key.id == keyed.id
    assert await store.read({str(uuid.uuid4())}, {"nobody"}) == []

    by_id.status, by_id.attempt = "assigned", 2
    await store.write([], [by_id], utcnow())
    assert by_id.version == 2
    [again] = await store.read({plain.id}, set())
    assert (again.status, again.attempt, again.version) == ("assigned", 2, 2)


async def test_an_update_that_lost_a_race_changes_nothing(store: TurnStore) -> None:
    task = new_task()
    await store.write([task], [], utcnow())
    [mine] = await store.read({task.id}, set())
    [theirs] = await store.read({task.id}, set())
    theirs.status = "cancelled"
    await store.write([], [theirs], utcnow())

    mine.status = "assigned"
    with pytest.raises(StaleDataError):
        await store.write([], [mine], utcnow())
    [now] = await store.read({task.id}, set())
    assert now.status == "cancelled"


async def test_a_taken_idempotency_key_fails_the_whole_write(store: TurnStore) -> None:
    first = new_task(key="once")
    await store.write([first], [], utcnow())
    [known] = await store.read({first.id}, set())
    known.status = "assigned"

    with pytest.raises(IntegrityError):
        await store.write([new_task(), new_task(key="once")], [known], utcnow())
    [unchanged] = await store.read({first.id}, set())
    assert (unchanged.status, unchanged.version) == ("queued", 1)


async def test_after_a_failed_write_the_next_one_goes_through(store: TurnStore) -> None:
    # On SQLite the store keeps one connection for the leader's term: a failed transaction
    # must leave it out of any transaction, or every later turn would fail to begin.
    first = new_task(key="taken")
    await store.write([first], [], utcnow())
    with pytest.raises(IntegrityError):
        await store.write([new_task(key="taken")], [], utcnow())
    [stale] = await store.read({first.id}, set())
    stale.version = 99
    with pytest.raises(StaleDataError):
        await store.write([], [stale], utcnow())

    later = new_task()
    await store.write([later], [], utcnow())
    assert [row.id for row in await store.read({later.id}, set())] == [later.id]


async def test_on_sqlite_a_locked_database_makes_the_write_wait_not_the_loop(
    sqlite_file: tuple[str, SqliteLoopStore],
) -> None:
    path, store = sqlite_file
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer, e.g. the API in another process
    task = new_task()
    writing = asyncio.create_task(store.write([task], [], utcnow()))
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.005)
        ticks += 1
    assert ticks == 20
    assert not writing.done()

    holder.execute("COMMIT")
    await asyncio.wait_for(writing, 5)
    assert [row.id for row in await store.read({task.id}, set())] == [task.id]
    holder.close()


async def test_on_sqlite_a_lock_held_too_long_fails_the_write(
    sqlite_file: tuple[str, SqliteLoopStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, store = sqlite_file
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="locked"):
            await store.write([new_task()], [], utcnow())
    finally:
        holder.execute("ROLLBACK")
        holder.close()


async def test_sqlite_in_memory_goes_through_the_async_engine() -> None:
    url = "sqlite+aiosqlite://"
    engine = create_engine(DatabaseSettings(url=url))
    assert isinstance(turn_store(url, session_factory(engine)), SessionStore)
    await engine.dispose()


async def _write_turns(store: SqliteLoopStore, turns: int) -> list[TaskRow]:
    written = []
    for _ in range(turns):
        task = new_task()
        await store.write([task], [], utcnow())
        written.append(task)
        # A leader's turns wait on RabbitMQ in between (a round trip is half a millisecond
        # or more), which is when the checkpoint's thread gets its turn at the interpreter.
        await asyncio.sleep(0.001)
    if store._checkpointing is not None:
        await asyncio.wait([store._checkpointing])
    return written


async def test_on_sqlite_the_turns_commits_are_as_durable_as_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The leader's own connection, not only the engine's: its commits are what the intake
    # acknowledgements wait for. Under FULL it commits as NORMAL does and a thread syncs the
    # log before durable() returns (workmesh/engine/log_sync.py); under NORMAL nothing syncs.
    path = tmp_path / "w.db"
    await asyncio.to_thread(migrate, f"sqlite+aiosqlite:///{path}")
    synced: list[int] = []
    real_sync = log_sync._sync_file

    def sync(file: int) -> None:
        synced.append(os.fstat(file).st_ino)
        real_sync(file)

    monkeypatch.setattr(log_sync, "_sync_file", sync)
    for chosen, syncs in ((SqliteSynchronous.FULL, 1), (SqliteSynchronous.NORMAL, 0)):
        synced.clear()
        made = SqliteLoopStore(f"sqlite:///{path}", chosen)
        try:
            [(shown,)] = made.driver.connection.execute("PRAGMA synchronous")
            assert shown == 1, chosen  # NORMAL: no sync inside the commit, on the loop
            await made.write([new_task()], [], utcnow())
            assert synced == [], chosen  # not before a turn asks
            await made.durable()
            assert synced == [os.stat(f"{path}-wal").st_ino] * syncs, chosen
        finally:
            await made.close()


async def test_on_sqlite_outside_wal_mode_full_stays_in_the_commit(tmp_path: Path) -> None:
    # A file system where SQLite cannot use its log: the commit's own syncs cover the journal.
    path = tmp_path / "w.db"
    await asyncio.to_thread(migrate, f"sqlite+aiosqlite:///{path}")
    made = SqliteLoopStore(f"sqlite:///{path}", SqliteSynchronous.FULL)
    real_connect = store_module.SqliteLoopStore._sync_off_the_loop

    def rollback_journal(self: SqliteLoopStore, connection: sqlite3.Connection) -> object:
        connection.execute("PRAGMA journal_mode=DELETE")
        return real_connect(self, connection)

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(SqliteLoopStore, "_sync_off_the_loop", rollback_journal)
            [(shown,)] = made.driver.connection.execute("PRAGMA synchronous")
        assert shown == 2
        assert made.log_sync is None
        await made.write([new_task()], [], utcnow())
        await made.durable()
    finally:
        await made.close()


async def test_on_sqlite_turns_leave_the_checkpoint_to_a_thread(
    sqlite_file: tuple[str, SqliteLoopStore], tmp_path: Path
) -> None:
    path, store = sqlite_file
    # Turns never copy the log into the database file themselves (that would be on the loop).
    [(autocheckpoint,)] = store.driver.connection.execute("PRAGMA wal_autocheckpoint")
    assert autocheckpoint == 0

    written = await _write_turns(store, store_module.CHECKPOINT_WRITES)

    # The database file alone, without its log, holds what the store's checkpoint copied.
    alone = tmp_path / "alone.db"
    await asyncio.to_thread(shutil.copyfile, path, alone)
    copy = sqlite3.connect(alone)
    [(count,)] = copy.execute("SELECT count(*) FROM tasks")
    copy.close()
    assert count == len(written)


async def test_on_sqlite_the_log_stays_bounded_while_turns_write(
    sqlite_file: tuple[str, SqliteLoopStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, store = sqlite_file
    monkeypatch.setattr(store_module, "CHECKPOINT_WRITES", 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_LOG_LIMIT", 200)

    await _write_turns(store, 600)  # some 3000 pages in all
    await store.write([new_task()], [], utcnow())  # the log starts over at a write

    probe = sqlite3.connect(path)
    [(_, in_log, _)] = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    probe.close()
    # The limit, plus what the turns wrote while the last checkpoints ran in their thread (which
    # depends on how fast this machine writes); a log that never started over holds them all.
    assert in_log <= 1500


async def test_on_sqlite_a_reader_that_holds_the_log_delays_turns_only_briefly(
    sqlite_file: tuple[str, SqliteLoopStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, store = sqlite_file
    monkeypatch.setattr(store_module, "CHECKPOINT_WRITES", 10)
    monkeypatch.setattr(store_module, "CHECKPOINT_LOG_LIMIT", 100)
    monkeypatch.setattr(store_module, "CHECKPOINT_RESTART_WAIT", 0.2)
    await _write_turns(store, 5)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM tasks").fetchall()  # a snapshot the log must keep
    try:
        # The log outgrows the limit, and no RESTART can finish while the reader holds on: each
        # gives up after its wait, and the turns go on.
        longest = 0.0
        written = []
        for _ in range(120):
            started = time.monotonic()
            written.append(new_task())
            await store.write([written[-1]], [], utcnow())
            longest = max(longest, time.monotonic() - started)
            await asyncio.sleep(0)
        assert longest < 2.0
    finally:
        reader.execute("COMMIT")
        reader.close()
    ids = {task.id for task in written}
    assert {row.id for row in await store.read(ids, set())} == ids
