"""Tasks as the HTTP API sees them: submit, read, list, cancel, a worker's status change."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task, Worker
from models.base import utcnow
from models.workers import LIVE
from schemas.tasks import StatusChange, TaskSubmit
from workmesh.dispatch.lifecycle import (
    CANCELLABLE,
    ON_WORKER,
    REPORT_FOR_STATUS,
    LifecycleError,
    Report,
    TaskStatus,
    next_state,
    repeated_outcome,
)
from workmesh.services.assignments import apply_transition
from workmesh.services.counts import StatusCounts
from workmesh.services.group_commit import GroupCommit, Read, group_read

MAX_LIST_LIMIT = 1000


class NotFound(LookupError):
    pass


class NotYours(PermissionError):
    pass


@dataclass(frozen=True)
class Submitted:
    task: Task
    created: bool


async def submit(
    session: AsyncSession, body: TaskSubmit, submitted_by: str, max_attempts: int
) -> Submitted:
    """Store a new queued task, or return the one this submission repeats.

    Reads, then adds; the insert happens at the commit. If the same submission (its id or
    idempotency key) was stored between the look-up and the commit, the commit fails with
    IntegrityError, and the caller runs this again in a new transaction, which finds it.
    """
    if body.id is not None and (found := await session.get(Task, str(body.id))) is not None:
        return Submitted(found, created=False)
    if body.idempotency_key is not None:
        read, found = group_read(session, Task.idempotency_key, body.idempotency_key)
        if not read:
            found = await session.scalar(
                select(Task).where(Task.idempotency_key == body.idempotency_key)
            )
        if found is not None:
            return Submitted(found, created=False)
    now = utcnow()
    task = Task(
        id=str(body.id or uuid.uuid4()),
        kind=body.kind,
        payload=body.payload,
        priority=body.priority,
        status=TaskStatus.QUEUED.value,
        idempotency_key=body.idempotency_key,
        attempt=1,
        max_attempts=max_attempts,
        submitted_by=submitted_by,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    return Submitted(task, created=True)


async def submit_shared(
    writes: GroupCommit, body: TaskSubmit, submitted_by: str, max_attempts: int
) -> Submitted:
    """``submit`` in a transaction shared with the api role's other writes (GroupCommit)."""

    async def store(session: AsyncSession) -> Submitted:
        return await submit(session, body, submitted_by, max_attempts)

    reads: list[Read] = []
    if body.id is not None:
        reads.append((Task.id, str(body.id)))
    if body.idempotency_key is not None:
        reads.append((Task.idempotency_key, body.idempotency_key))
    try:
        return await writes.run(store, reads)
    except IntegrityError:
        # The same submission was stored between our look-up and our commit (by another api
        # process, or by the dispatcher from the intake queue): run again, the look-up finds
        # it. (Two of them in one group are told apart by the group's fallback, each alone.)
        return await writes.run(store, reads)


async def get_task(session: AsyncSession, task_id: str, worker_id: str | None = None) -> Task:
    """The task; ``worker_id`` set means a worker asks, and may see only its own."""
    task = await session.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id!r}")
    if worker_id is not None and worker_id not in (task.worker_id, task.rejected_by):
        raise NotYours(f"task {task_id} is not assigned to worker {worker_id!r}")
    return task


async def list_tasks(
    session: AsyncSession, status: TaskStatus | None, worker_id: str | None, limit: int
) -> list[Task]:
    query = select(Task).order_by(Task.created_at.desc(), Task.id).limit(min(limit, MAX_LIST_LIMIT))
    if status is not None:
        query = query.where(Task.status == status.value)
    if worker_id is not None:
        query = query.where(Task.worker_id == worker_id)
    return list((await session.scalars(query)).all())


async def cancel(session: AsyncSession, task_id: str) -> tuple[Task, str | None]:
    """Cancel a task that has not ended; returns it and the worker it was on, if any."""
    task = await get_task(session, task_id)
    status = TaskStatus(task.status)
    if status not in CANCELLABLE:
        raise LifecycleError(f"task is {status.value}; only unfinished tasks can be cancelled")
    on_worker = task.worker_id if status in ON_WORKER else None
    now = utcnow()
    task.status, task.updated_at, task.finished_at = TaskStatus.CANCELLED.value, now, now
    return task, on_worker


async def change_status(
    session: AsyncSession,
    task_id: str,
    worker_id: str,
    change: StatusChange,
    max_rejections: int | None = None,
) -> tuple[Task, Report]:
    """A worker changes the status of its own task (the HTTP twin of an AMQP report)."""
    status, result, error = change.status, change.result, change.error
    report = REPORT_FOR_STATUS.get(status)
    if report is None:
        allowed = ", ".join(REPORT_FOR_STATUS)
        raise LifecycleError(f"a worker may set the status to {allowed}, not {status!r}")
    task = await get_task(session, task_id, worker_id)
    current = TaskStatus(task.status)
    if repeated_outcome(current, report, worker_id, task.worker_id, task.rejected_by):
        return task, report
    if task.worker_id != worker_id:
        raise NotYours(f"task {task_id} is not assigned to worker {worker_id!r}")
    transition = next_state(
        current, report, task.attempt, task.max_attempts, task.rejections, max_rejections
    )
    apply_transition(task, transition, report, worker_id, result, error)
    return task, report


async def stats(session: AsyncSession, counts: StatusCounts) -> dict[str, object]:
    by_status = await counts.read(session)
    workers = (await session.scalars(select(Worker).where(LIVE))).all()
    return {
        "tasks": {s.value: by_status.get(s.value, 0) for s in TaskStatus},
        "workers": {
            "total": len(workers),
            "online": sum(w.online for w in workers),
            "active_online": sum(w.online and w.tier == "active" for w in workers),
            "reserve_engaged": sum(w.engaged for w in workers),
            "capacity_online": sum(w.capacity for w in workers if w.online),
            "load": sum(by_status[s.value] for s in ON_WORKER),
        },
    }
