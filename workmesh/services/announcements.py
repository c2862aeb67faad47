"""The API's outbox: task changes committed and still to be announced on RabbitMQ.

The API writes a row in the transaction that takes a task off its worker (a worker's final
report over HTTP or WebSocket, a cancel), publishes the report or cancel notice after the
commit, and deletes the row once RabbitMQ has confirmed it. A submission gets a row only when
its publish failed (the HTTP 202), so the common case costs no write. What is left after a
grace was never announced; the dispatcher leader does its follow-up instead
(workmesh/engine/healing.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Task, TaskAnnouncement
from models.base import utcnow

CANCELLED = "cancelled"
SUBMITTED = "submitted"


def record(
    session: AsyncSession, task_id: str, worker_id: str | None, event: str
) -> TaskAnnouncement:
    """Note, in the caller's transaction, that ``event`` must still be announced."""
    note = TaskAnnouncement(task_id=task_id, worker_id=worker_id, event=event, created_at=utcnow())
    session.add(note)
    return note


class Outbox:
    """Crosses off the notes whose messages RabbitMQ has confirmed, in groups.

    Each delete is a write transaction of its own (on SQLite a sync of the log, under the one
    writer lock the dispatcher needs too), so the notes confirmed while one delete runs wait
    for it and share the next, as a leader turn's reports share its commit.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._waiting: set[int] = set()
        self._deleting = asyncio.Lock()

    async def cross_off(self, note: TaskAnnouncement) -> None:
        self._waiting.add(note.id)
        async with self._deleting:
            if note.id not in self._waiting:
                return  # crossed off with the group before
            group, self._waiting = self._waiting, set()
            async with self.sessions() as session, session.begin():
                await forget(session, group)


async def unpublished(sessions: async_sessionmaker[AsyncSession], task_id: str) -> None:
    """Note a stored task whose publish to the intake queue failed."""
    async with sessions() as session, session.begin():
        record(session, task_id, None, SUBMITTED)


async def overdue(
    session: AsyncSession, before: datetime, limit: int
) -> list[tuple[TaskAnnouncement, Task | None]]:
    """The oldest notes written before ``before``, each with its task as it is now (None once
    the retention has deleted it)."""
    rows = await session.execute(
        select(TaskAnnouncement, Task)
        .outerjoin(Task, Task.id == TaskAnnouncement.task_id)
        .where(TaskAnnouncement.created_at < before)
        .order_by(TaskAnnouncement.id)
        .limit(limit)
    )
    return [(note, task) for note, task in rows]


async def forget(session: AsyncSession, ids: Collection[int]) -> None:
    await session.execute(delete(TaskAnnouncement).where(TaskAnnouncement.id.in_(ids)))
