"""Finished tasks are kept for WORKMESH_DISPATCH_RETENTION, then deleted by the leader's review;
live tasks are never touched, and the status counts stay cheap on a big table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Task
from models.base import utcnow
from tests.bots import Producer
from tests.conftest import Harness, eventually
from tests.test_metrics_e2e import scrape, value
from workmesh.db import create_engine, session_factory
from workmesh.dispatch.lifecycle import FINISHED, TaskStatus
from workmesh.services.assignments import count_by_status, delete_finished
from workmesh.services.counts import StatusCounts
from workmesh.settings import DatabaseSettings


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    yield session_factory(engine)
    await engine.dispose()


def stored(status: TaskStatus, finished_at: datetime | None, name: str = "") -> Task:
    return Task(
        id=str(uuid.uuid4()),
        kind=name or "job",
        payload={},
        priority=0,
        status=status.value,
        max_attempts=3,
        submitted_by="test",
        finished_at=finished_at,
    )


async def kinds(sessions: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessions() as session:
        return set(await session.scalars(select(Task.kind)))


async def test_the_oldest_finished_tasks_go_first_and_live_ones_stay(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    days = [now - timedelta(days=d) for d in range(10)]
    async with sessions() as session, session.begin():
        session.add_all(
            [
                stored(TaskStatus.DONE, days[9], "done-9"),
                stored(TaskStatus.DEAD, days[8], "dead-8"),
                stored(TaskStatus.CANCELLED, days[7], "cancelled-7"),
                stored(TaskStatus.DONE, days[1], "done-1"),  # within the retention
                stored(TaskStatus.QUEUED, None, "queued"),
                stored(TaskStatus.IN_PROGRESS, None, "in-progress"),
                # Not a state the mesh makes; a live task is never deleted, whatever it says.
                stored(TaskStatus.RETRYING, days[9], "retrying-9"),
            ]
        )
    before = now - timedelta(days=2)
    # The oldest three: done-9 and retrying-9 (either order), dead-8; the live one stays.
    async with sessions() as session, session.begin():
        assert await delete_finished(session, before, limit=3) == 2
    assert {"done-9", "dead-8"}.isdisjoint(await kinds(sessions))
    async with sessions() as session, session.begin():
        assert await delete_finished(session, before, limit=3) == 1  # cancelled-7
    async with sessions() as session, session.begin():
        assert await delete_finished(session, before, limit=3) == 0
    assert await kinds(sessions) == {"done-1", "queued", "in-progress", "retrying-9"}


async def read_counts(
    counts: StatusCounts, sessions: async_sessionmaker[AsyncSession]
) -> dict[str, int]:
    async with sessions() as session:
        return await counts.read(session)


async def test_finished_counts_are_read_again_as_often_as_they_are_cheap(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ticks: Iterator[float] = iter([])
    counts = StatusCounts(clock=lambda: next(ticks))
    async with sessions() as session, session.begin():
        session.add_all([stored(TaskStatus.DONE, utcnow()), stored(TaskStatus.QUEUED, None)])
    # Due at once; the count "takes" 0.1 s (the clock is read to check, start, end): the
    # next is due 50 x 0.1 s after its end.
    ticks = iter([0.0, 0.0, 0.1])
    first = await read_counts(counts, sessions)
    assert (first["done"], first["queued"], first["cancelled"]) == (1, 1, 0)
    async with sessions() as session, session.begin():
        session.add_all([stored(TaskStatus.DONE, utcnow()), stored(TaskStatus.QUEUED, None)])
    ticks = iter([5.0])  # not due: live statuses are counted again, finished ones kept
    second = await read_counts(counts, sessions)
    assert (second["done"], second["queued"]) == (1, 2)
    ticks = iter([5.1, 5.1, 5.1])
    third = await read_counts(counts, sessions)
    assert (third["done"], third["queued"]) == (2, 2)
    assert set(third) == {status.value for status in TaskStatus}


async def test_a_quick_finished_count_is_exact_at_every_read(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ticks: Iterator[float] = iter([])
    counts = StatusCounts(clock=lambda: next(ticks))
    async with sessions() as session, session.begin():
        session.add(stored(TaskStatus.DONE, utcnow()))
    ticks = iter([0.0, 0.0, 0.005])  # 5 ms: a small table
    assert (await read_counts(counts, sessions))["done"] == 1
    async with sessions() as session, session.begin():
        session.add(stored(TaskStatus.DONE, utcnow()))
    ticks = iter([0.006, 0.006, 0.011])  # at once: counted again
    assert (await read_counts(counts, sessions))["done"] == 2


async def test_readers_at_once_share_one_finished_count(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /api/v1/stats and the operator page ask at once: a big table is counted once."""
    finished_counts = 0

    async def slow_count(session: AsyncSession, statuses: Iterable[TaskStatus]) -> dict[str, int]:
        nonlocal finished_counts
        wanted = set(statuses)
        if wanted == set(FINISHED):
            finished_counts += 1
            await asyncio.sleep(0.1)  # as on a table of a few million tasks
        return await count_by_status(session, wanted)

    monkeypatch.setattr("workmesh.services.counts.count_by_status", slow_count)
    async with sessions() as session, session.begin():
        session.add(stored(TaskStatus.DONE, utcnow()))
    counts = StatusCounts()
    answers = await asyncio.gather(*(read_counts(counts, sessions) for _ in range(5)))
    assert [a["done"] for a in answers] == [1] * 5
    assert finished_counts == 1


async def test_finished_tasks_are_deleted_after_the_retention(harness: Harness) -> None:
    mesh = await harness.start(retention=1.0)
    bot = await harness.bot("r1", capacity=4, mode="hold")
    await harness.wait_online("r1")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        ids = [await producer.submit(idempotency_key=f"key-{n}") for n in range(4)]
    await eventually(lambda: len(bot.received) == 4, message="four delivered")
    # One stored over HTTP while the bot is full (so it stays queued), then cancelled:
    # cancelled tasks go too.
    status, body = await harness.api(
        "POST", "/api/v1/tasks", token=token, json={"kind": "later", "payload": {}}
    )
    assert status == 201, body
    cancelled = body["id"]
    status, body = await harness.api("POST", f"/api/v1/tasks/{cancelled}/cancel")
    assert status == 200, body
    assert body["status"] == "cancelled"
    for task_id in ids[:3]:
        await bot.finish(task_id)

    async def all_gone() -> bool:
        for task_id in [*ids[:3], cancelled]:
            status, _ = await harness.api("GET", f"/api/v1/tasks/{task_id}")
            if status != 404:
                return False
        return True

    await eventually(all_gone, message="the finished tasks deleted")
    # The task still on the worker stays, however old it is.
    await asyncio.sleep(1.5)
    await harness.wait_task(ids[3], "the held task kept", status="in_progress")
    samples = await scrape(harness, mesh.settings.http.port)
    assert value(samples, "workmesh_tasks_deleted_total") == 4
    # Its task gone, an idempotency key makes a new task again.
    status, body = await harness.api(
        "POST",
        "/api/v1/tasks",
        token=token,
        json={"kind": "again", "payload": {}, "idempotency_key": "key-0"},
    )
    assert status == 201, body
    assert body["id"] != ids[0]
    # And a key whose task is kept still names that task.
    status, body = await harness.api(
        "POST",
        "/api/v1/tasks",
        token=token,
        json={"kind": "again", "payload": {}, "idempotency_key": "key-3"},
    )
    assert (status, body["id"]) == (200, ids[3])


@pytest.mark.parametrize("retention", [0.0, 3600.0])
async def test_retention_counts_from_when_a_task_finished_and_zero_keeps_all(
    harness: Harness, retention: float
) -> None:
    mesh = await harness.start(retention=retention)
    bot = await harness.bot("r2", capacity=2, mode="done")
    await harness.wait_online("r2")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        ids = [await producer.submit() for _ in range(3)]
    for task_id in ids:
        await harness.wait_task(task_id, "done", status="done")
    assert len(bot.received) == 3
    # Two of them finished a day ago.
    async with mesh.sessions() as session, session.begin():
        await session.execute(
            update(Task)
            .where(Task.id.in_(ids[:2]))
            .values(finished_at=utcnow() - timedelta(days=1))
            .execution_options(synchronize_session=False)
        )

    async def present() -> set[str]:
        async with mesh.sessions() as session:
            return set(await session.scalars(select(Task.id).where(Task.id.in_(ids))))

    async def only_the_fresh_one() -> bool:
        return await present() == {ids[2]}

    if retention:
        await eventually(only_the_fresh_one, message="the two old ones deleted")
    else:
        await asyncio.sleep(1.0)  # ten reviews
        assert await present() == set(ids)
