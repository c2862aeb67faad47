"""Heartbeats that arrive together are recorded in one transaction, each with its own outcome:
AMQP ones in a HeartbeatBook (workmesh/services/heartbeats.py), HTTP and WebSocket ones in the
api role's shared writes (GroupCommit); on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Worker
from schemas.workers import WorkerCreate
from workmesh.db import create_engine, session_factory
from workmesh.services import workers
from workmesh.services.group_commit import GroupCommit
from workmesh.services.heartbeats import HeartbeatBook
from workmesh.services.workers import UnknownWorker
from workmesh.settings import DatabaseSettings


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    made = session_factory(engine)
    yield made
    await engine.dispose()


async def add(sessions: async_sessionmaker[AsyncSession], worker_id: str) -> str:
    async with sessions() as session, session.begin():
        return await workers.create_worker(session, WorkerCreate(id=worker_id, capacity=1))


async def last_beats(sessions: async_sessionmaker[AsyncSession]) -> dict[str, Any]:
    async with sessions() as session:
        rows = await session.execute(select(Worker.id, Worker.last_heartbeat_at))
        return dict(rows.all())


async def test_heartbeats_together_are_one_transaction_each_with_its_outcome(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tokens = {name: await add(sessions, name) for name in ("a", "b", "c")}
    transactions = 0

    def began(*_: Any) -> None:
        nonlocal transactions
        transactions += 1

    engine = sessions.kw["bind"].sync_engine
    event.listen(engine, "begin", began)
    book = HeartbeatBook(sessions, linger=0.05)
    outcomes = await asyncio.gather(
        book.record("a", tokens["a"]),
        book.record("b", tokens["b"].encode()),  # a header may come as bytes
        book.record("c", tokens["a"]),  # c's heartbeat with a's token
        book.record("ghost", tokens["a"]),
        book.record("a", None),
        return_exceptions=True,
    )
    event.remove(engine, "begin", began)

    assert list(outcomes[:2]) == [None, None]
    assert isinstance(outcomes[2], PermissionError)
    assert "worker 'c'" in str(outcomes[2])
    assert isinstance(outcomes[3], UnknownWorker)
    assert isinstance(outcomes[4], PermissionError)
    assert transactions == 1
    beats = await last_beats(sessions)
    assert beats["a"] is not None
    assert beats["b"] is not None
    assert beats["c"] is None


async def test_a_heartbeat_after_a_batch_starts_the_next_one(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    token = await add(sessions, "a")
    book = HeartbeatBook(sessions, linger=0.01)
    await book.record("a", token)
    first = (await last_beats(sessions))["a"]
    await book.record("a", token)
    assert (await last_beats(sessions))["a"] > first


async def test_a_failed_write_fails_every_heartbeat_of_its_batch(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await add(sessions, "a")
    book = HeartbeatBook(sessions, linger=0.01)

    async def broken(_beats: object) -> None:
        raise ConnectionError("database gone")

    monkeypatch.setattr(book, "_write", broken)
    outcomes = await asyncio.gather(
        book.record("a", token), book.record("a", token), return_exceptions=True
    )
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    monkeypatch.undo()
    await book.record("a", token)  # the book goes on after a failed batch


async def test_channel_heartbeats_share_the_api_roles_transactions(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    for name in ("a", "b", "c", "gone"):
        await add(sessions, name)
    async with sessions() as session, session.begin():
        await workers.remove_worker(session, "gone")
    writes = GroupCommit(sessions)
    outcomes = await asyncio.gather(
        *(workers.heartbeat_written(writes, name) for name in ("a", "b", "c")),
        return_exceptions=True,
    )
    assert list(outcomes) == [None, None, None]
    assert writes.commits == 1
    beats = await last_beats(sessions)
    assert all(beats[name] is not None for name in ("a", "b", "c"))

    # A removed worker's heartbeat is refused alone; the others' are still written.
    before = beats["a"]
    lone_refusal = await asyncio.gather(
        workers.heartbeat_written(writes, "gone"),
        workers.heartbeat_written(writes, "a"),
        return_exceptions=True,
    )
    assert isinstance(lone_refusal[0], UnknownWorker)
    assert lone_refusal[1] is None
    beats = await last_beats(sessions)
    assert beats["gone"] is None
    assert beats["a"] > before
    await writes.close()
