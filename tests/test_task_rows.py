"""The dispatcher's task rows (workmesh/services/task_rows.py) are stored and read exactly as
SQLAlchemy's own statements store and read them, on both databases: the hot path runs
precompiled statements through the driver, so nothing else would notice a difference."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Connection, Text, cast, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.test_turn_store import new_task
from workmesh.db import create_engine
from workmesh.services import task_rows
from workmesh.services.task_rows import TASKS, TaskRow
from workmesh.settings import DatabaseSettings

NOW = datetime(2026, 11, 24, 3, 4, 5, 678901, tzinfo=UTC)
LATER = datetime(2026, 11, 24, 3, 4, 6, 5, tzinfo=UTC)
# What the hot path leaves unread comes back as TaskRow's defaults.
UNREAD = {"result": None, "submitted_by": "", "created_at": None, "updated_at": None}


def a_task(**changes: Any) -> TaskRow:
    """A row with a value in most columns: nested JSON, an aware datetime, a rejecter."""
    varied: dict[str, Any] = {
        "payload": {"n": 1, "nested": {"ü": [1, 2.5, None]}},
        "priority": 7,
        "status": "assigned",
        "attempt": 2,
        "rejected_by": "bot-9",
        "assigned_at": NOW,
        "submitted_by": "producer",
    }
    return replace(new_task(), **(varied | changes))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_engine(DatabaseSettings(url=database_url))
    yield made
    await made.dispose()


def stored(connection: Connection, task_id: str) -> dict[str, Any]:
    """A row as the database holds it, every column as text."""
    row = connection.execute(
        select(*(cast(column, Text).label(column.name) for column in TASKS.c)).where(
            TASKS.c.id == task_id
        )
    ).one()
    texts = dict(row._mapping)
    del texts["id"]
    return texts


def by_sqlalchemy(connection: Connection, task: TaskRow) -> None:
    connection.execute(insert(TASKS), [asdict(task) | {"created_at": NOW, "updated_at": NOW}])


async def test_inserts_store_what_sqlalchemy_stores(engine: AsyncEngine) -> None:
    ours, theirs = a_task(), a_task(idempotency_key="k-1", result={"x": 1}, error="e")
    theirs_twin = replace(theirs, id=str(uuid.uuid4()), idempotency_key="k-2")
    ours_twin = replace(ours, id=str(uuid.uuid4()))
    async with engine.begin() as connection:
        await connection.run_sync(task_rows.write_rows, [ours, theirs], [], NOW)
        await connection.run_sync(by_sqlalchemy, ours_twin)
        await connection.run_sync(by_sqlalchemy, theirs_twin)
    async with engine.connect() as connection:
        for mine, twin in ((ours, ours_twin), (theirs, theirs_twin)):
            written = await connection.run_sync(stored, mine.id)
            expected = await connection.run_sync(stored, twin.id)
            if mine.idempotency_key:
                written.pop("idempotency_key"), expected.pop("idempotency_key")
            assert written == expected


async def test_reads_return_what_sqlalchemy_returns(engine: AsyncEngine) -> None:
    tasks = [a_task(), a_task(idempotency_key="k-3", finished_at=LATER, worker_id=None)]
    async with engine.begin() as connection:
        await connection.run_sync(task_rows.write_rows, tasks, [], NOW)
    async with engine.connect() as connection:
        read = await connection.run_sync(task_rows.read_rows, [tasks[0].id], ["k-3", "none"])
        expected = (
            await connection.execute(
                select(*task_rows._READ).where(TASKS.c.id.in_([t.id for t in tasks]))
            )
        ).all()
    assert sorted((asdict(row) for row in read), key=lambda r: r["id"]) == sorted(
        (dict(r._mapping) | UNREAD for r in expected),
        key=lambda r: r["id"],
    )
    # The types the planner relies on: aware datetimes and decoded JSON.
    first = next(row for row in read if row.id == tasks[0].id)
    assert first.assigned_at == NOW
    assert first.assigned_at.tzinfo is not None
    assert first.payload == {"n": 1, "nested": {"ü": [1, 2.5, None]}}


async def test_updates_store_what_sqlalchemy_stores(engine: AsyncEngine) -> None:
    ours, twin = a_task(), a_task()
    async with engine.begin() as connection:
        await connection.run_sync(task_rows.write_rows, [ours, twin], [], NOW)
    done: dict[str, Any] = {
        "status": "done",
        "result": {"ok": True},
        "finished_at": LATER,
        "error": None,
    }
    async with engine.begin() as connection:
        await connection.run_sync(task_rows.write_rows, [], [replace(ours, **done)], LATER)
        await connection.execute(
            update(TASKS)
            .where(TASKS.c.id == twin.id)
            .values(done | {"updated_at": LATER, "version": TASKS.c.version + 1})
        )
    async with engine.connect() as connection:
        assert await connection.run_sync(stored, ours.id) == await connection.run_sync(
            stored, twin.id
        )
