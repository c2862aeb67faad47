"""HTTP submissions go in the api role's shared transactions (workmesh.services.tasks.
submit_shared): submissions sent together share a commit and one look-up of their idempotency
keys, and a repeated id or idempotency key still makes one task — within a group, and when
someone else stores it between the look-up and the commit. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Task
from schemas.tasks import TaskSubmit
from tests.test_group_commit import Counted
from workmesh.db import create_engine, session_factory
from workmesh.services import tasks
from workmesh.services.group_commit import GroupCommit, Read, Work
from workmesh.settings import DatabaseSettings


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], Counted]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    yield session_factory(engine), Counted(engine)
    await engine.dispose()


def submission(**fields: Any) -> TaskSubmit:
    return TaskSubmit.model_validate({"kind": "job", **fields})


async def count(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Task)) or 0)


async def test_submissions_sent_together_share_one_commit(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, counted = db
    writes = GroupCommit(sessions)
    counted.commits = counted.selects = 0
    outcomes = await asyncio.gather(
        *(
            tasks.submit_shared(writes, submission(idempotency_key=f"k{i}"), "script", 3)
            for i in range(10)
        )
    )
    assert counted.commits == 1
    assert counted.selects == 1  # the group looked all ten keys up at once
    assert all(outcome.created for outcome in outcomes)
    assert len({outcome.task.id for outcome in outcomes}) == 10
    assert await count(sessions) == 10
    await writes.close()


async def test_a_key_or_id_repeated_within_a_group_makes_one_task(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, _ = db
    writes = GroupCommit(sessions)
    same_id = uuid.uuid4()
    outcomes = await asyncio.gather(
        tasks.submit_shared(writes, submission(idempotency_key="order-1"), "script", 3),
        tasks.submit_shared(writes, submission(kind="other"), "script", 3),
        tasks.submit_shared(writes, submission(idempotency_key="order-1"), "script", 3),
        tasks.submit_shared(writes, submission(id=str(same_id)), "script", 3),
        tasks.submit_shared(writes, submission(idempotency_key="order-1"), "script", 3),
        tasks.submit_shared(writes, submission(id=str(same_id)), "script", 3),
    )
    keyed = [outcomes[0], outcomes[2], outcomes[4]]
    assert [o.created for o in keyed].count(True) == 1
    assert len({o.task.id for o in keyed}) == 1
    by_id = [outcomes[3], outcomes[5]]
    assert [o.created for o in by_id].count(True) == 1
    assert {o.task.id for o in by_id} == {str(same_id)}
    assert outcomes[1].created
    assert await count(sessions) == 3
    await writes.close()


class RivalBeforeCommit(GroupCommit):
    """Runs each work in a transaction of its own; before the first one commits, a rival (another
    api process, or the dispatcher) stores the same submission."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rival: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(sessions)
        self._rival: Callable[[], Awaitable[None]] | None = rival

    async def run(self, work: Work[Any], reads: Sequence[Read] = ()) -> Any:
        async with self.sessions() as session, session.begin():
            result = await work(session)
            if self._rival is not None:
                rival, self._rival = self._rival, None
                await rival()
        return result


async def test_a_submission_stored_by_someone_else_meanwhile_is_found_not_doubled(
    db: tuple[async_sessionmaker[AsyncSession], Counted],
) -> None:
    sessions, _ = db
    stored_by_rival: list[str] = []

    async def rival() -> None:
        async with sessions() as session, session.begin():
            outcome = await tasks.submit(session, submission(idempotency_key="k"), "rival", 3)
        stored_by_rival.append(outcome.task.id)

    outcome = await tasks.submit_shared(
        RivalBeforeCommit(sessions, rival), submission(idempotency_key="k"), "script", 3
    )
    assert not outcome.created
    assert [outcome.task.id] == stored_by_rival
    assert outcome.task.submitted_by == "rival"
    assert await count(sessions) == 1
