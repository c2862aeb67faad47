"""Workers: registration, heartbeats, and what the API shows of them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task, Worker
from models.base import utcnow
from models.workers import LIVE
from schemas.workers import WorkerCreate, WorkerUpdate, WorkerView
from workmesh.dispatch.lifecycle import ON_WORKER
from workmesh.security import hash_token, new_token
from workmesh.services.group_commit import GroupCommit


class WorkerExists(ValueError):
    pass


class UnknownWorker(LookupError):
    pass


async def live_worker(session: AsyncSession, worker_id: str) -> Worker:
    """The worker's row, unless there is none or the worker was removed."""
    worker = await session.get(Worker, worker_id)
    if worker is None or worker.removed_at is not None:
        raise UnknownWorker(f"unknown worker {worker_id!r}")
    return worker


async def create_worker(session: AsyncSession, spec: WorkerCreate) -> str:
    """Register a worker, or bring a removed one back; returns its token, which is shown once
    and never stored."""
    token = new_token()
    worker = await session.get(Worker, spec.id)
    if worker is None:
        worker = Worker(id=spec.id)
        session.add(worker)
    elif worker.removed_at is None:
        raise WorkerExists(f"worker {spec.id!r} exists already")
    worker.tier = spec.tier.value
    worker.capacity = spec.capacity
    worker.token_hash = hash_token(token)
    worker.online = worker.engaged = False
    worker.last_heartbeat_at = None
    worker.removed_at = None
    return token


async def remove_worker(session: AsyncSession, worker_id: str) -> None:
    """Remove a worker. Its token stops working at once; the dispatcher leader, at its next
    review, puts its unfinished tasks back in the queue and deletes its queue."""
    worker = await live_worker(session, worker_id)
    worker.removed_at = utcnow()
    worker.token_hash = hash_token(new_token())  # void, and never shown
    worker.webhook_url = worker.webhook_secret = worker.email = None


async def replace_worker_token(session: AsyncSession, worker_id: str) -> str:
    """A new token for the worker, shown once; the old one stops working (over HTTP at once,
    over AMQP at the dispatcher leader's next review)."""
    worker = await live_worker(session, worker_id)
    token = new_token()
    worker.token_hash = hash_token(token)
    return token


async def update_worker(session: AsyncSession, worker_id: str, change: WorkerUpdate) -> WorkerView:
    """Change a worker's capacity or tier; returns the worker as changed. The dispatcher
    leader takes it up at its next review; a worker whose tier changes starts that tier
    disengaged (a new reserve waits for the scaling policy to bring it in)."""
    worker = await live_worker(session, worker_id)
    if change.capacity is not None:
        worker.capacity = change.capacity
    if change.tier is not None and change.tier.value != worker.tier:
        worker.tier = change.tier.value
        worker.engaged = False
    await session.flush()
    (view,) = await worker_views(session, worker_id)
    return view


async def heartbeat_written(writes: GroupCommit, worker_id: str) -> None:
    """Record a heartbeat that came over HTTP or a WebSocket, in the api role's next shared
    transaction (on SQLite, one write transaction each held the one writer's lock that the
    dispatcher's turns and the hand-outs need). Raises UnknownWorker for a removed worker."""

    async def beat(session: AsyncSession) -> None:
        worker = await live_worker(session, worker_id)
        worker.last_heartbeat_at = utcnow()

    await writes.run(beat, reads=[(Worker.id, worker_id)])


async def worker_views(session: AsyncSession, worker_id: str | None = None) -> list[WorkerView]:
    loads = dict(
        (
            await session.execute(
                select(Task.worker_id, func.count())
                .where(Task.status.in_([s.value for s in ON_WORKER]))
                .group_by(Task.worker_id)
            )
        ).all()
    )
    query = select(Worker).where(LIVE).order_by(Worker.id)
    if worker_id is not None:
        query = query.where(Worker.id == worker_id)
    workers = (await session.scalars(query)).all()
    return [
        WorkerView.model_validate(w).model_copy(update={"load": loads.get(w.id, 0)})
        for w in workers
    ]
