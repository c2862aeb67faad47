"""The dispatcher leader's reads and writes: tasks to assign, reports to apply, the pool."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models import ApiToken, Task, Worker
from models.base import utcnow
from models.workers import LIVE
from schemas.workers import Tier
from workmesh.dispatch.lifecycle import (
    ASSIGNABLE,
    FINISHED,
    ON_WORKER,
    Report,
    TaskStatus,
    Transition,
)
from workmesh.dispatch.pool import WorkerRecord


class TaskState(Protocol):
    """A task's lifecycle fields, as an ORM ``Task`` or a hot-path ``TaskRow`` holds them."""

    id: str
    kind: str
    payload: dict[str, Any]
    priority: int
    status: str
    worker_id: str | None
    attempt: int
    max_attempts: int
    rejected_by: str | None
    rejections: int
    result: Any
    error: str | None
    assigned_at: datetime | None
    finished_at: datetime | None
    leased_until: datetime | None


def mark_assigned(task: TaskState, worker_id: str, now: datetime) -> None:
    task.status = TaskStatus.ASSIGNED.value
    task.worker_id = worker_id
    task.assigned_at = now
    task.leased_until = None  # a new assignment is not handed out yet


async def worker_records(session: AsyncSession) -> list[WorkerRecord]:
    rows = await session.scalars(select(Worker).where(LIVE))
    return [
        WorkerRecord(
            w.id,
            Tier(w.tier),
            w.capacity,
            w.token_hash,
            w.last_heartbeat_at,
            w.online,
            w.engaged,
            wants_notices=bool(w.webhook_url or w.email),
        )
        for w in rows
    ]


async def tasks_on_workers(session: AsyncSession) -> list[tuple[str, str]]:
    rows = await session.execute(
        select(Task.id, Task.worker_id).where(Task.status.in_([s.value for s in ON_WORKER]))
    )
    return [(task_id, worker_id) for task_id, worker_id in rows.all() if worker_id]


async def changed_since(session: AsyncSession, ids: set[str], since: datetime) -> set[str]:
    """Which of these tasks were changed after ``since``."""
    if not ids:
        return set()
    rows = await session.scalars(select(Task.id).where(Task.id.in_(ids), Task.updated_at > since))
    return set(rows)


async def producer_token_names(session: AsyncSession) -> dict[str, str]:
    """token hash → token name, for the tokens that may submit tasks."""
    rows = await session.execute(select(ApiToken.token_hash, ApiToken.name))
    return dict(rows.all())


async def return_tasks_of(session: AsyncSession, worker_id: str) -> list[Task]:
    """A worker went offline or was removed: its unfinished tasks go back to the queue."""
    return await _back_to_queue(session, Task.worker_id == worker_id)


async def return_tasks_of_removed(session: AsyncSession) -> list[Task]:
    """Unfinished tasks still on removed workers go back to the queue. The review does this
    when it sees the removal; this catches what a leader change in between left behind."""
    removed = select(Worker.id).where(Worker.removed_at.is_not(None))
    return await _back_to_queue(session, Task.worker_id.in_(removed))


async def _back_to_queue(session: AsyncSession, on: ColumnElement[bool]) -> list[Task]:
    rows = (
        await session.scalars(select(Task).where(on, Task.status.in_([s.value for s in ON_WORKER])))
    ).all()
    now = utcnow()
    for task in rows:
        task.status = TaskStatus.QUEUED.value
        task.worker_id = None
        task.updated_at = now
    return list(rows)


async def set_worker_flags(
    session: AsyncSession, worker_id: str, *, online: bool, engaged: bool
) -> None:
    await session.execute(
        update(Worker).where(Worker.id == worker_id).values(online=online, engaged=engaged)
    )


def _orphaned(older_than: float) -> ColumnElement[bool]:
    cutoff = utcnow() - timedelta(seconds=older_than)
    return and_(Task.status.in_([s.value for s in ASSIGNABLE]), Task.updated_at < cutoff)


async def any_orphaned(session: AsyncSession, older_than: float) -> bool:
    """Whether ``orphaned_tasks`` would find anything (a read, as ``leases.any_expired``)."""
    query = select(Task.id).where(_orphaned(older_than)).limit(1)
    return await session.scalar(query) is not None


async def orphaned_tasks(session: AsyncSession, older_than: float) -> list[Task]:
    """Waiting tasks untouched for a while; called only when no message is left in RabbitMQ,
    so these have lost theirs (a crash between a commit and its publish) and need one again."""
    rows = (await session.scalars(select(Task).where(_orphaned(older_than)))).all()
    now = utcnow()
    for task in rows:
        task.status = TaskStatus.QUEUED.value
        task.updated_at = now
    return list(rows)


async def count_by_status(
    session: AsyncSession, statuses: Iterable[TaskStatus] = tuple(TaskStatus)
) -> dict[str, int]:
    """Stored tasks in each of ``statuses`` (an index range per status, so counting the few
    live ones stays cheap however many finished ones are kept)."""
    wanted = [status.value for status in statuses]
    rows = await session.execute(
        select(Task.status, func.count()).where(Task.status.in_(wanted)).group_by(Task.status)
    )
    counts = dict.fromkeys(wanted, 0)
    counts.update(dict(rows.all()))
    return counts


async def any_finished_before(session: AsyncSession, before: datetime) -> bool:
    """Whether ``delete_finished`` may find anything (a read off ix_tasks_finished_at)."""
    query = select(Task.id).where(Task.finished_at < before).limit(1)
    return await session.scalar(query) is not None


async def delete_finished(session: AsyncSession, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` tasks that finished before ``before``; returns how many."""
    # The oldest by finished_at alone, then the status check on those few: with the status in
    # the same WHERE, SQLite (which keeps no statistics) walks the status index through every
    # finished task instead of reading the oldest off ix_tasks_finished_at.
    oldest = (
        select(Task.id, Task.status)
        .where(Task.finished_at < before)
        .order_by(Task.finished_at)
        .limit(limit)
        .subquery()
    )
    finished = select(oldest.c.id).where(oldest.c.status.in_([s.value for s in FINISHED]))
    result = await session.execute(delete(Task).where(Task.id.in_(finished)))
    return int(getattr(result, "rowcount", 0) or 0)


def intake_body(task: TaskState) -> dict[str, object]:
    """The message that puts an existing task back into the queue."""
    return {"id": task.id, "kind": task.kind, "payload": task.payload, "priority": task.priority}


def assignment_body(task: TaskState) -> dict[str, object]:
    return {
        "task_id": task.id,
        "kind": task.kind,
        "payload": task.payload,
        "priority": task.priority,
        "attempt": task.attempt,
    }


def apply_transition(
    task: TaskState,
    transition: Transition,
    report: Report,
    worker_id: str,
    result: Any,
    error: str | None,
) -> None:
    """Write a lifecycle transition onto the task row (the API uses this too)."""
    now = utcnow()
    task.status = transition.status.value
    task.attempt = transition.attempt
    if report is Report.DONE:
        task.result = result
        task.finished_at = now
    elif report is Report.FAILED:
        task.error = error or "failed without a reason"
        if transition.status is TaskStatus.DEAD:
            task.finished_at = now
    elif report is Report.REJECTED:
        task.rejected_by = worker_id
        task.worker_id = None
        task.rejections = (task.rejections or 0) + 1
        if transition.status is TaskStatus.DEAD:
            task.error = (
                f"rejections: {task.rejections}, the most allowed "
                f"(WORKMESH_DISPATCH_MAX_REJECTIONS); the last by {worker_id}"
            )
            task.finished_at = now
