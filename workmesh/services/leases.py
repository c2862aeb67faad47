"""Leases: a task handed out over HTTP or WebSocket must be started in time, or it goes back.

AMQP workers need none of this: the broker itself takes an unacknowledged message back when a
worker's connection dies. An HTTP worker acknowledges nothing to RabbitMQ (the API takes the
message for it), so the database carries the promise instead: ``leased_until``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task
from workmesh.dispatch.lifecycle import TaskStatus


async def hand_out(
    session: AsyncSession, task_id: str, worker_id: str, until: datetime, redelivered: bool
) -> Task | None:
    """Lease the task to its worker, or None when the assignment message is stale.

    Stale: the task has since gone to another worker, been cancelled, started or finished, or
    was handed out already — a second message for the same assignment (the task came back and
    was assigned to this worker again). A message RabbitMQ *redelivers* is the same hand-out
    coming back (a WebSocket dropped before the worker confirmed): it is handed out again.
    """
    task = await session.get(Task, task_id)
    if task is None or task.worker_id != worker_id:
        return None
    if task.status != TaskStatus.ASSIGNED.value:
        return None
    if task.leased_until is not None and not redelivered:
        return None
    task.leased_until = until
    return task


def _expired(now: datetime) -> ColumnElement[bool]:
    return and_(
        Task.status == TaskStatus.ASSIGNED.value,
        Task.leased_until.is_not(None),
        Task.leased_until < now,
    )


async def any_expired(session: AsyncSession, now: datetime) -> bool:
    """Whether ``take_expired`` would find anything: a read, so the leader can look without
    holding back its turns (it takes them under the pool's lock only when there are some)."""
    return await session.scalar(select(Task.id).where(_expired(now)).limit(1)) is not None


async def take_expired(session: AsyncSession, now: datetime) -> list[tuple[Task, str]]:
    """Tasks handed out and not started in time, put back in the queue (the caller publishes
    them), each with the worker that let its lease run out."""
    rows = (await session.scalars(select(Task).where(_expired(now)))).all()
    expired = [(task, task.worker_id or "") for task in rows]
    for task in rows:
        task.status = TaskStatus.QUEUED.value
        task.worker_id = None
        task.leased_until = None
    return expired
