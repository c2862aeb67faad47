"""The api role's writes share transactions: what callers start together, or while a group
commits, is committed at once; a work that raises (or loses a race) leaves every other
caller's answer as it would have been alone. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from models import Task
from tests.test_retention_e2e import stored
from workmesh.db import create_engine, session_factory
from workmesh.dispatch.lifecycle import TaskStatus
from workmesh.services.group_commit import GroupCommit
from workmesh.settings import DatabaseSettings


class Counted:
    """The engine's commits and SELECTs, as the database saw them."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.commits = 0
        self.selects = 0
        event.listen(engine.sync_engine, "commit", self._commit)
        event.listen(engine.sync_engine, "before_cursor_execute", self._statement)

    def _commit(self, *_: Any) -> None:
        self.commits += 1

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.selects += statement.lstrip().upper().startswith("SELECT")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], Counted]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    yield session_factory(engine), Counted(engine)
    await engine.dispose()


async def store(sessions: async_sessionmaker[AsyncSession], n: int) -> list[str]:
    tasks = [stored(TaskStatus.QUEUED, None, f"task {i}") for i in range(n)]
    async with sessions() as session, session.begin():
        session.add_all(tasks)
    return [task.id for task in tasks]


async def kinds(sessions: async_sessionmaker[AsyncSession], ids: list[str]) -> list[str]:
    async with sessions() as session:
        return [(await session.get_one(Task, task_id)).kind for task_id in ids]


def rename(task_id: str, kind: str) -> Callable[[AsyncSession], Awaitable[str]]:
    async def work(session: AsyncSession) -> str:
        task = await session.get_one(Task, task_id)
        before, task.kind = task.kind, kind
        return before

    return work


async def test_works_started_together_share_one_commit_and_one_read(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, counted = db
    ids = await store(sessions, 10)
    group = GroupCommit(sessions)
    counted.commits = counted.selects = 0
    answers = await asyncio.gather(
        *(
            group.run(rename(task_id, f"renamed {i}"), reads=[(Task.id, task_id)])
            for i, task_id in enumerate(ids)
        )
    )
    assert answers == [f"task {i}" for i in range(10)]  # each caller its own answer
    assert (counted.commits, group.commits) == (1, 1)
    assert counted.selects == 1  # the ten rows in one query, found there by each work
    assert await kinds(sessions, ids) == [f"renamed {i}" for i in range(10)]


async def test_work_arriving_while_the_writers_are_busy_goes_in_the_next_group(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, counted = db
    ids = await store(sessions, 7)
    group = GroupCommit(sessions)  # two writers
    release = asyncio.Event()

    async def slow(session: AsyncSession) -> str:
        await session.get_one(Task, ids[0])
        await release.wait()  # a group being written, for as long as the test wants
        return "slow"

    counted.commits = 0
    slow_ones = [asyncio.create_task(group.run(slow))]
    await asyncio.sleep(0.05)
    # The other writer is free: a work arriving now waits for nobody.
    assert await asyncio.wait_for(group.run(rename(ids[0], "at once")), 5) == "task 0"
    assert counted.commits == 1
    slow_ones.append(asyncio.create_task(group.run(slow)))
    await asyncio.sleep(0.05)
    later = [asyncio.create_task(group.run(rename(task_id, "later"))) for task_id in ids[1:]]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in [*slow_ones, *later])  # both writers busy
    release.set()
    await asyncio.gather(*slow_ones, *later)
    assert (counted.commits, group.commits) == (4, 4)  # one, the two slow ones, the six together
    assert await kinds(sessions, ids) == ["at once"] + ["later"] * 6


async def test_a_refusal_rolls_back_its_group_and_each_work_runs_alone(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, counted = db
    ids = await store(sessions, 3)
    group = GroupCommit(sessions)

    async def refused(session: AsyncSession) -> str:
        await rename(ids[1], "half done")(session)  # changed, then refused: must not stay
        raise ValueError("not this one")

    counted.commits = 0
    answers = await asyncio.gather(
        group.run(rename(ids[0], "a")),
        group.run(refused),
        group.run(rename(ids[2], "c")),
        return_exceptions=True,
    )
    assert [answers[0], answers[2]] == ["task 0", "task 2"]
    assert repr(answers[1]) == "ValueError('not this one')"
    assert (counted.commits, group.commits) == (2, 2)  # the two good ones, each alone
    assert await kinds(sessions, ids) == ["a", "task 1", "c"]


async def test_a_change_made_meanwhile_is_read_again_alone_not_overwritten(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    """The version check catches a row changed between the group's read and its write (the
    dispatcher's turn, say): the group is written again one by one, each on fresh rows."""
    sessions, _ = db
    ids = await store(sessions, 2)
    group = GroupCommit(sessions)
    raced = False

    async def bump(session: AsyncSession) -> str:
        nonlocal raced
        task = await session.get_one(Task, ids[0])
        if not raced:
            raced = True
            async with sessions() as other, other.begin():
                (await other.get_one(Task, ids[0])).priority = 9
        task.kind = f"seen priority {task.priority}"
        return task.kind

    answers = await asyncio.gather(
        group.run(bump, reads=[(Task.id, ids[0])]),
        group.run(rename(ids[1], "b"), reads=[(Task.id, ids[1])]),
    )
    assert list(answers) == ["seen priority 9", "task 1"]
    async with sessions() as session:
        first = await session.get_one(Task, ids[0])
        assert (first.kind, first.priority) == ("seen priority 9", 9)
    assert await kinds(sessions, ids[1:]) == ["b"]


async def test_a_race_lost_alone_reaches_its_caller(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, _ = db
    [task_id] = await store(sessions, 1)
    group = GroupCommit(sessions)

    async def always_raced(session: AsyncSession) -> None:
        task = await session.get_one(Task, task_id)
        async with sessions() as other, other.begin():
            (await other.get_one(Task, task_id)).priority += 1
        task.kind = "never written"

    with pytest.raises(StaleDataError):
        await group.run(always_raced)
    assert await kinds(sessions, [task_id]) == ["task 0"]


async def test_close_waits_for_what_was_started(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, _ = db
    ids = await store(sessions, 3)
    group = GroupCommit(sessions)
    started = [asyncio.create_task(group.run(rename(task_id, "closed"))) for task_id in ids]
    await asyncio.sleep(0)
    await group.close()
    assert all(task.done() for task in started)
    assert await kinds(sessions, ids) == ["closed"] * 3


async def test_work_arriving_as_the_writers_finish_is_written(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    """A caller that runs its next work as soon as its last is answered does so before the
    writer that answered it has ended: it must start a writer of its own, not wait for that
    one."""
    sessions, _ = db
    [task_id] = await store(sessions, 1)
    group = GroupCommit(sessions, writers=1)

    async def one_after_another() -> list[str]:
        return [await group.run(rename(task_id, f"change {n}")) for n in range(5)]

    answers = await asyncio.wait_for(one_after_another(), 5)
    assert answers == ["task 0"] + [f"change {n}" for n in range(4)]
