"""The leader's review looks for expired leases, orphaned tasks and tasks past the retention
with a read first, and takes them (a write; the first two under the pool's lock) only when the
read found some: the read must find what the taking would."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.base import utcnow
from tests.test_retention_e2e import sessions, stored
from workmesh.dispatch.lifecycle import TaskStatus
from workmesh.services import assignments, leases

__all__ = ["sessions"]  # the fixture, on SQLite and PostgreSQL


async def test_a_lease_is_found_expired_only_when_taking_it_would_take_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    lapsed = stored(TaskStatus.ASSIGNED, None, "lapsed")
    lapsed.leased_until = now - timedelta(seconds=1)
    async with sessions() as session, session.begin():
        running = stored(TaskStatus.ASSIGNED, None, "running")
        running.leased_until = now + timedelta(seconds=30)
        started = stored(TaskStatus.IN_PROGRESS, None, "started")
        started.leased_until = now - timedelta(seconds=1)  # started in time: no longer leased
        session.add_all([running, started, stored(TaskStatus.ASSIGNED, None, "over AMQP")])
    async with sessions() as session:
        assert not await leases.any_expired(session, now)
    async with sessions() as session, session.begin():
        session.add(lapsed)
    async with sessions() as session:
        assert await leases.any_expired(session, now)
    async with sessions() as session, session.begin():
        taken = await leases.take_expired(session, now)
    assert [task.kind for task, _ in taken] == ["lapsed"]
    async with sessions() as session:
        assert not await leases.any_expired(session, now)


async def test_an_orphan_is_found_only_when_the_sweep_would_revive_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    long_ago = utcnow() - timedelta(minutes=5)
    async with sessions() as session, session.begin():
        fresh = stored(TaskStatus.QUEUED, None, "fresh")
        on_worker = stored(TaskStatus.IN_PROGRESS, None, "on a worker")
        on_worker.updated_at = long_ago
        session.add_all([fresh, on_worker])
    async with sessions() as session:
        assert not await assignments.any_orphaned(session, older_than=60)
    async with sessions() as session, session.begin():
        lost = stored(TaskStatus.RETRYING, None, "lost")
        lost.updated_at = long_ago
        session.add(lost)
    async with sessions() as session:
        assert await assignments.any_orphaned(session, older_than=60)
        assert not await assignments.any_orphaned(session, older_than=600)
    async with sessions() as session, session.begin():
        revived = await assignments.orphaned_tasks(session, older_than=60)
    assert [task.kind for task in revived] == ["lost"]
    async with sessions() as session:
        assert not await assignments.any_orphaned(session, older_than=60)


async def test_the_retention_sweep_is_due_only_when_a_task_finished_before_the_cutoff(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    now = utcnow()
    cutoff = now - timedelta(days=7)
    async with sessions() as session, session.begin():
        session.add_all(
            [
                stored(TaskStatus.DONE, now - timedelta(days=1), "recent"),
                stored(TaskStatus.QUEUED, None, "live"),
            ]
        )
    async with sessions() as session:
        assert not await assignments.any_finished_before(session, cutoff)
    async with sessions() as session, session.begin():
        session.add(stored(TaskStatus.DEAD, now - timedelta(days=8), "old"))
    async with sessions() as session:
        assert await assignments.any_finished_before(session, cutoff)
    async with sessions() as session, session.begin():
        assert await assignments.delete_finished(session, cutoff, limit=10) == 1
    async with sessions() as session:
        assert not await assignments.any_finished_before(session, cutoff)
