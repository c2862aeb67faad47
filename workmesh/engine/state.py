"""What the dispatcher leader's loops share while it leads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from workmesh.dispatch.pool import WorkerPool
from workmesh.engine.publisher import MeshPublisher
from workmesh.metrics import Metrics
from workmesh.services import assignments
from workmesh.settings import Settings


@dataclass
class LeaderState:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics
    publisher: MeshPublisher
    pool: WorkerPool
    # Serialises every change to the pool and to tasks the leader makes, so a batch of
    # assignments, a batch of reports and a review never interleave half-done.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set whenever room may have appeared on a worker; the intake loop waits on it when full.
    room: asyncio.Event = field(default_factory=asyncio.Event)
    # token hash → name, for producer and admin tokens (refreshed at each review).
    producer_tokens: dict[str, str] = field(default_factory=dict)
    # Batches under way; on shutdown they are let finish before the connection closes.
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)

    def finish_even_if_stopped(self, work: Coroutine[Any, Any, None]) -> Awaitable[None]:
        """Run a batch so that stopping the loop that started it does not cut it in half."""
        task = asyncio.create_task(work)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return asyncio.shield(task)

    async def reload(self) -> None:
        """Rebuild the pool from the database: on taking office, and after a failed batch."""
        async with self.sessions() as session:
            records = await assignments.worker_records(session)
            on_workers = await assignments.tasks_on_workers(session)
            self.producer_tokens = await assignments.producer_token_names(session)
        now = time.monotonic()
        from datetime import UTC, datetime

        self.pool.task_worker.clear()
        for worker in self.pool.workers.values():
            worker.tasks.clear()
        self.pool.sync(records, datetime.now(UTC), now)
        for task_id, worker_id in on_workers:
            if worker_id in self.pool.workers:
                self.pool.assign(task_id, worker_id, now)
        self.room.set()
