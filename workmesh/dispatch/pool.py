"""The leader's picture of the worker pool: who is online, engaged, and how loaded.

The database stays the source of truth; the leader rebuilds this picture from it when it
takes office and keeps it current from its own assignments and the workers' reports.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from schemas.workers import Tier
from workmesh.dispatch.least_load import Candidate, pick_least_loaded


@dataclass
class PoolWorker:
    worker_id: str
    tier: Tier
    capacity: int
    online: bool = False
    engaged: bool = False
    token_hash: str = ""
    # Has a webhook or an email address: its assignments go to the notifier too.
    wants_notices: bool = False
    tasks: set[str] = field(default_factory=set)
    last_assigned: int = 0  # the number of its latest assignment; lower = waited longer
    idle_since: float = 0.0
    removed: bool = False  # gone from the database's live workers; forgotten after review

    @property
    def eligible(self) -> bool:
        return self.online and (self.tier is Tier.ACTIVE or self.engaged)

    @property
    def load(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True)
class WorkerRecord:
    """The part of a worker's database row the pool needs."""

    worker_id: str
    tier: Tier
    capacity: int
    token_hash: str
    last_heartbeat_at: datetime | None
    # As the last leader recorded them, so a new leader sees the change when a worker it
    # never saw alive has gone silent, and keeps the reserves that were engaged.
    online: bool = False
    engaged: bool = False
    wants_notices: bool = False


@dataclass(frozen=True)
class PoolChange:
    """A worker event for ``workmesh.events``: online, offline, activated, standby."""

    worker_id: str
    event: str


class WorkerPool:
    def __init__(self, heartbeat_timeout: float, reserve_idle: float) -> None:
        self.heartbeat_timeout = heartbeat_timeout
        self.reserve_idle = reserve_idle
        self.workers: dict[str, PoolWorker] = {}
        self.task_worker: dict[str, str] = {}
        # Assignments are numbered, not timed: a batch assigns many at one clock reading,
        # and the tie between equally loaded workers must still go to the longest-waiting.
        self._assignments = itertools.count(1)

    # -- membership -----------------------------------------------------------------------

    def adopt(self, records: Iterable[WorkerRecord], now: float) -> None:
        """Take the workers as the database last recorded them, judging nothing yet: the
        next ``sync`` compares their heartbeats with that record and reports what changed."""
        self.workers = {
            r.worker_id: PoolWorker(
                r.worker_id,
                r.tier,
                r.capacity,
                online=r.online,
                engaged=r.engaged and r.tier is Tier.RESERVE,
                token_hash=r.token_hash,
                wants_notices=r.wants_notices,
                idle_since=now,
            )
            for r in records
        }
        self.task_worker.clear()

    def sync(
        self, records: Iterable[WorkerRecord], wall_now: datetime, now: float
    ) -> list[PoolChange]:
        """Take the workers' rows; a worker is online while its last heartbeat is recent."""
        changes: list[PoolChange] = []
        seen: set[str] = set()
        for record in records:
            seen.add(record.worker_id)
            worker = self.workers.get(record.worker_id)
            if worker is None:
                worker = PoolWorker(
                    record.worker_id,
                    record.tier,
                    record.capacity,
                    online=record.online,
                    engaged=record.engaged and record.tier is Tier.RESERVE,
                    idle_since=now,
                )
                self.workers[record.worker_id] = worker
            if record.tier is not worker.tier:
                # Re-tiered by an admin (PATCH /api/v1/workers/{id}): the new tier starts
                # disengaged, so an active worker made a reserve stops taking tasks until the
                # scaling policy brings it in.
                was_eligible = worker.eligible
                worker.tier, worker.engaged = record.tier, False
                if was_eligible and not worker.eligible:
                    changes.append(PoolChange(worker.worker_id, "standby"))
            worker.capacity = record.capacity
            worker.token_hash = record.token_hash
            worker.wants_notices = record.wants_notices
            alive = (
                record.last_heartbeat_at is not None
                and (wall_now - record.last_heartbeat_at).total_seconds() < self.heartbeat_timeout
            )
            if alive != worker.online:
                worker.online = alive
                changes.append(PoolChange(worker.worker_id, "online" if alive else "offline"))
                if not alive and worker.engaged:
                    worker.engaged = False
                    changes.append(PoolChange(worker.worker_id, "standby"))
        for gone in set(self.workers) - seen:
            # Removed by an admin: it takes nothing more, and the review puts its tasks back
            # in the queue, deletes its queue and then forgets it.
            worker = self.workers[gone]
            if not worker.removed:
                worker.removed, worker.online, worker.engaged = True, False, False
                worker.token_hash = ""
                changes.append(PoolChange(gone, "removed"))
        return changes

    def forget(self, worker_id: str) -> None:
        """Drop a removed worker, once the review has put its tasks back in the queue."""
        worker = self.workers.pop(worker_id, None)
        for task_id in list(worker.tasks) if worker else []:
            self.task_worker.pop(task_id, None)

    # -- load -----------------------------------------------------------------------------

    def free_capacity(self) -> int:
        return sum(max(w.capacity - w.load, 0) for w in self.workers.values() if w.eligible)

    def pick(self, avoid: str | None = None) -> str | None:
        return pick_least_loaded(
            (
                Candidate(w.worker_id, w.tier, w.capacity, w.load, w.last_assigned)
                for w in self.workers.values()
                if w.eligible
            ),
            avoid=avoid,
        )

    def assign(self, task_id: str, worker_id: str, now: float) -> None:
        self.release(task_id, now)
        worker = self.workers[worker_id]
        worker.tasks.add(task_id)
        worker.last_assigned = next(self._assignments)
        self.task_worker[task_id] = worker_id

    def release(self, task_id: str, now: float) -> str | None:
        """Forget ``task_id``'s place on its worker; idempotent. Returns the worker, if any."""
        worker_id = self.task_worker.pop(task_id, None)
        if worker_id is not None and worker_id in self.workers:
            worker = self.workers[worker_id]
            worker.tasks.discard(task_id)
            if not worker.tasks:
                worker.idle_since = now
        return worker_id

    def tasks_of(self, worker_id: str) -> set[str]:
        worker = self.workers.get(worker_id)
        return set(worker.tasks) if worker else set()

    # -- reserves -------------------------------------------------------------------------

    def reserves(self) -> list[PoolWorker]:
        return sorted(
            (w for w in self.workers.values() if w.tier is Tier.RESERVE and w.online),
            key=lambda w: w.worker_id,
        )

    def idle_engaged(self, now: float) -> list[PoolWorker]:
        return [
            w
            for w in self.reserves()
            if w.engaged and not w.tasks and now - w.idle_since >= self.reserve_idle
        ]

    def engage(self, desired: int, now: float) -> list[PoolChange]:
        """Bring the number of engaged reserves towards ``desired``.

        Only reserves that have sat idle for the reserve idle time go back to standby; a
        busy one stays engaged until its tasks are done.
        """
        changes: list[PoolChange] = []
        reserves = self.reserves()
        engaged = [w for w in reserves if w.engaged]
        for worker in [w for w in reserves if not w.engaged][: max(desired - len(engaged), 0)]:
            worker.engaged = True
            worker.idle_since = now
            changes.append(PoolChange(worker.worker_id, "activated"))
        surplus = len(engaged) - desired
        for worker in self.idle_engaged(now)[: max(surplus, 0)]:
            worker.engaged = False
            changes.append(PoolChange(worker.worker_id, "standby"))
        return changes
