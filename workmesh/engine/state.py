"""What the dispatcher leader's loops share while it leads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from workmesh.dispatch.pool import WorkerPool
from workmesh.engine.publisher import MeshPublisher
from workmesh.engine.store import TurnStore
from workmesh.metrics import Metrics
from workmesh.services import assignments
from workmesh.settings import Settings

Result = TypeVar("Result")


@dataclass
class LeaderState:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    metrics: Metrics
    publisher: MeshPublisher
    pool: WorkerPool
    # Where turns read and write their task rows (the rest uses ``sessions``).
    store: TurnStore
    # Serialises every change to the pool and to tasks the leader makes, so a turn's commit
    # and a review never interleave half-done.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Set whenever room may have appeared on a worker; the intake loop waits on it when full.
    room: asyncio.Event = field(default_factory=asyncio.Event)
    # token hash → name, for producer and admin tokens (refreshed at each review).
    producer_tokens: dict[str, str] = field(default_factory=dict)
    # Batches under way; on shutdown they are let finish before the connection closes.
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)

    def track(self, work: Coroutine[Any, Any, Result]) -> asyncio.Task[Result]:
        """Run a piece of a turn as a task of its own that a stop lets finish."""
        task = asyncio.create_task(work)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    async def reload(self) -> None:
        """Rebuild the pool from the database: on taking office, and after a failed batch."""
        async with self.sessions() as session:
            records = await assignments.worker_records(session)
            on_workers = await assignments.tasks_on_workers(session)
            self.producer_tokens = await assignments.producer_token_names(session)
        now = time.monotonic()
        self.pool.adopt(records, now)
        for task_id, worker_id in on_workers:
            if worker_id in self.pool.workers:
                self.pool.assign(task_id, worker_id, now)
        self.room.set()


RACE_RETRIES = 3


async def with_fresh_state(state: LeaderState, work: Callable[[], Awaitable[Result]]) -> Result:
    """Run one grouped transaction; if it lost a race with the HTTP API (a task changed or
    an idempotency key taken meanwhile), read everything again and retry. Any failure
    rebuilds the pool first, since the failed try may have picked workers that never got
    their task."""
    for attempt in range(1, RACE_RETRIES + 1):
        try:
            return await work()
        except (StaleDataError, IntegrityError):
            await state.reload()
            if attempt == RACE_RETRIES:
                raise
        except Exception:
            await state.reload()
            raise
    raise AssertionError("unreachable")
