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
import contextlib
import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models import Task, TaskAnnouncement
from models.base import utcnow

log = logging.getLogger(__name__)

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
    """Crosses off the notes whose messages RabbitMQ has confirmed, in groups, off the request.

    Each delete is a write transaction (on SQLite a sync of the log, under the one writer lock
    the dispatcher needs too), so the notes confirmed within ``FLUSH_AFTER`` share one. A note
    not crossed off in time (a failed delete, a process that died first) only has its follow-up
    done twice by the leader after its grace.
    """

    FLUSH_AFTER = 0.2  # seconds; well inside the leader's grace (workmesh/engine/healing.py)

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self._waiting: set[int] = set()
        self._flushing: asyncio.Task[None] | None = None

    def cross_off(self, note: TaskAnnouncement) -> None:
        self._waiting.add(note.id)
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush_soon())

    async def close(self) -> None:
        """Cross off what is waiting now (on shutdown)."""
        if self._flushing is not None:
            self._flushing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flushing
        await self.flush()

    async def _flush_soon(self) -> None:
        while self._waiting:
            await asyncio.sleep(self.FLUSH_AFTER)
            await self.flush()

    async def flush(self) -> None:
        group, self._waiting = self._waiting, set()
        if not group:
            return
        try:
            async with self.sessions() as session, session.begin():
                await forget(session, group)
        except Exception:
            log.exception("%d outbox notes stay; the leader will follow them up again", len(group))


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
