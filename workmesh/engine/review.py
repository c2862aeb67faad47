"""The leader's periodic review of the pool: heartbeats, scaling, orphans and metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from aio_pika.abc import AbstractChannel
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task
from models.base import utcnow
from rabbitmq.topology import INTAKE_QUEUE, declare_queue, retry_queue, worker_queue
from workmesh.dispatch.pool import PoolChange
from workmesh.dispatch.scaling import PoolView, ScalingPolicy, StepPolicy, ThresholdPolicy
from workmesh.engine.healing import follow_up_unannounced
from workmesh.engine.state import LeaderState
from workmesh.services import assignments, leases
from workmesh.services.counts import StatusCounts
from workmesh.settings import ScalingPolicyName, parse_thresholds

log = logging.getLogger(__name__)

# How long the reconciliation trusts a task's report to be on its way after the change was
# committed (the API publishes it right after its commit).
REPORT_GRACE = timedelta(seconds=2)


def scaling_policy(state: LeaderState) -> ScalingPolicy:
    config = state.settings.dispatch
    if config.scaling_policy is ScalingPolicyName.THRESHOLD:
        return ThresholdPolicy(parse_thresholds(config.scaling_thresholds), config.scaling_window)
    return StepPolicy()


# The retention sweep deletes at most this many tasks per transaction, and at most this many
# transactions per review (so up to 5000 a second at the default review interval).
FORGET_BATCH = 500
FORGET_ROUNDS = 10
FORGET_PAUSE = 0.005


class PoolReview:
    def __init__(self, state: LeaderState, channel: AbstractChannel) -> None:
        self.state = state
        self.channel = channel  # for queue inspection and declaring new workers' queues
        self.policy = scaling_policy(state)
        self.desired: int | None = None
        self.declared: set[str] = set()
        self.reviews = 0
        config = state.settings.dispatch
        self.reconcile_every = max(1, round(config.reconcile_interval / config.review_interval))
        self.counts = StatusCounts()

    async def run(self) -> None:
        while True:
            await self.review()
            await asyncio.sleep(self.state.settings.dispatch.review_interval)

    async def review(self) -> None:
        state = self.state
        backlog = await self._depth(INTAKE_QUEUE)
        waiting_retries = 0
        for delay in state.settings.dispatch.retry_delays:
            waiting_retries += await self._depth(retry_queue(delay).name)
        queues_empty = backlog == 0 and waiting_retries == 0
        async with state.sessions() as session:
            records = await assignments.worker_records(session)
            # Tokens made or removed since the last look take effect within a review.
            state.producer_tokens = await assignments.producer_token_names(session)
            counts = await self.counts.read(session)
            # Looked for here, in one read with the rest; taken back under the lock only when
            # there are some, so that a review holds back the turns for no query it can do
            # without the lock (looking under it held them 9.9 ms a review, design.md §8).
            leases_due = await leases.any_expired(session, utcnow())
            orphans_due = queues_empty and await assignments.any_orphaned(
                session, state.settings.dispatch.orphan_after
            )
            # Likewise the retention sweep: on SQLite its delete takes the one write lock the
            # turns need, even when it deletes nothing.
            forget_before = self._retention_cutoff()
            if forget_before and not await assignments.any_finished_before(session, forget_before):
                forget_before = None  # nothing has finished that long ago
        # A worker's queue exists before the worker can be picked, so no assignment is
        # ever published to a queue that is not there.
        await self._declare_queues(r.worker_id for r in records)
        self.reviews += 1
        reconcile = self.reviews % self.reconcile_every == 0
        now = time.monotonic()
        async with state.lock:
            # Only what must agree with the pool happens under the lock; turns wait for it.
            room_before = state.pool.free_capacity()
            changes = state.pool.sync(records, datetime.now(UTC), now)
            view = PoolView(
                backlog=backlog,
                free_capacity=state.pool.free_capacity(),
                engaged=sum(w.engaged for w in state.pool.reserves()),
                idle_engaged=len(state.pool.idle_engaged(now)),
                available=len(state.pool.reserves()),
            )
            desired = self.policy.desired(now, view)
            changes += state.pool.engage(desired, now)
            returned: list[Task] = []
            if changes or reconcile:
                try:
                    returned = await self._record(changes, reconcile, now)
                except Exception:
                    await state.reload()  # the database still says what it said; look again
                    raise
            if changes:
                # Announced before the cycle may use the change (it waits for the lock), and on
                # the channel its task.assigned events take: whoever listens hears of a worker
                # online or activated before any task assigned to it.
                await self._announce(changes)
            if changes or state.pool.free_capacity() > room_before:
                state.room.set()  # (more room without an event: an admin raised a capacity)
            expired = await self._expire_leases(now) if leases_due else []
            orphans: list[Task] = []
            if orphans_due:
                # Under the lock: a turn must not assign a task while it is being revived.
                async with state.sessions() as session, session.begin():
                    orphans = await assignments.orphaned_tasks(
                        session, state.settings.dispatch.orphan_after
                    )
        if forget_before is not None:
            await self._forget_finished(forget_before)
        for task in returned + orphans + [task for task, _ in expired]:
            await state.publisher.intake(assignments.intake_body(task), task.priority)
        for task, worker_id in expired:
            log.info("task %s: worker %s did not start it within its lease", task.id, worker_id)
            await state.publisher.event(
                "task.lease_expired", {"task_id": task.id, "worker_id": worker_id}
            )
        if orphans:
            log.warning("published %d orphaned tasks again", len(orphans))
        await self._purge_offline(changes)
        await self._announce_scale(desired)
        if reconcile:
            await follow_up_unannounced(state)
        self._export(backlog, counts)

    async def _record(self, changes: list[PoolChange], reconcile: bool, now: float) -> list[Task]:
        """Write what the review changed: offline workers' tasks back to the queue, the
        workers' flags, and (now and then) the reconciled loads."""
        state = self.state
        returned: list[Task] = []
        async with state.sessions() as session, session.begin():
            if reconcile:
                if await self._reconcile(session, now):
                    state.room.set()
                returned += await assignments.return_tasks_of_removed(session)
            for change in changes:
                if change.event in ("offline", "removed"):
                    returned += await assignments.return_tasks_of(session, change.worker_id)
            for worker_id in {c.worker_id for c in changes}:
                worker = state.pool.workers[worker_id]
                await assignments.set_worker_flags(
                    session, worker_id, online=worker.online, engaged=worker.engaged
                )
        for task in returned:
            state.pool.release(task.id, now)
        for change in changes:
            if change.event == "removed":
                state.pool.forget(change.worker_id)
        return returned

    def _retention_cutoff(self) -> datetime | None:
        retention = self.state.settings.dispatch.retention
        return None if retention <= 0 else utcnow() - timedelta(seconds=retention)

    async def _forget_finished(self, before: datetime) -> None:
        """Delete the tasks that finished longer ago than the retention, oldest first.

        In short transactions: on SQLite each holds the one write lock that turns need, so a
        backlog (retention just switched on over a big table) is worked off a few thousand
        rows per review, not in one long delete.
        """
        for _ in range(FORGET_ROUNDS):
            async with self.state.sessions() as session, session.begin():
                deleted = await assignments.delete_finished(session, before, FORGET_BATCH)
            self.state.metrics.tasks_deleted.inc(deleted)
            if deleted < FORGET_BATCH:
                return
            # A pause longer than a turn's own between its tries for SQLite's lock
            # (workmesh/engine/store.py), so that a waiting turn gets in between two rounds.
            await asyncio.sleep(FORGET_PAUSE)

    async def _expire_leases(self, now: float) -> list[tuple[Task, str]]:
        """Tasks handed out over HTTP/WebSocket and not started in time go back to the queue.

        Under the lock, like an offline worker's tasks: the pool's count must drop with them.
        """
        async with self.state.sessions() as session, session.begin():
            expired = await leases.take_expired(session, utcnow())
        for task, _ in expired:
            self.state.pool.release(task.id, now)
        if expired:
            self.state.room.set()
        return expired

    async def _depth(self, queue_name: str) -> int:
        queue = await self.channel.declare_queue(queue_name, passive=True)
        result = queue.declaration_result
        return int(result.message_count or 0)

    async def _announce(self, changes: list[PoolChange]) -> None:
        """worker.online, offline, activated, standby and removed, in the order they happened."""
        for change in changes:
            log.info("worker %s is %s", change.worker_id, change.event)
            await self.state.publisher.event(
                f"worker.{change.event}", {"worker_id": change.worker_id}
            )

    async def _purge_offline(self, changes: list[PoolChange]) -> None:
        """Assignments still waiting in an offline worker's queue now belong to someone else
        (their tasks went back to the intake queue). A removed worker's queue goes: RabbitMQ
        cancels its consumer, so a worker still running learns that it was removed."""
        for change in changes:
            name = worker_queue(change.worker_id).name
            if change.event == "offline":
                queue = await self.channel.declare_queue(name, passive=True)
                await queue.purge()
            elif change.event == "removed":
                await self.channel.queue_delete(name)  # (no error if it is gone already)
                self.declared.discard(change.worker_id)

    async def _announce_scale(self, desired: int) -> None:
        if desired != self.desired:
            self.desired = desired
            self.state.metrics.desired_reserve.set(desired)
            await self.state.publisher.event(
                "pool.scale",
                {
                    "desired_reserve": desired,
                    "policy": self.state.settings.dispatch.scaling_policy.value,
                    "reserves_online": len(self.state.pool.reserves()),
                },
            )

    async def _declare_queues(self, worker_ids: Iterable[str]) -> None:
        for worker_id in set(worker_ids) - self.declared:
            await declare_queue(self.channel, worker_queue(worker_id))
            self.declared.add(worker_id)

    async def _reconcile(self, session: AsyncSession, now: float) -> bool:
        """Make each worker's load match the database again.

        The leader's count moves with its own assignments and the reports it hears; a change
        the HTTP API committed but could not announce would otherwise hold a slot forever.
        """
        pool = self.state.pool
        truth: dict[str, str] = dict(await assignments.tasks_on_workers(session))
        stale = set(pool.task_worker) - set(truth)
        # A change committed a moment ago has its report on the way: leave it to the report.
        stale -= await assignments.changed_since(session, stale, utcnow() - REPORT_GRACE)
        for task_id in stale:
            pool.release(task_id, now)
        for task_id, worker_id in truth.items():
            if pool.task_worker.get(task_id) != worker_id and worker_id in pool.workers:
                pool.assign(task_id, worker_id, now)
        if stale:
            log.warning("reconciled: %d tasks had left their workers unannounced", len(stale))
        return bool(stale)

    def _export(self, backlog: int, counts: dict[str, int]) -> None:
        metrics = self.state.metrics
        metrics.queue_depth.labels(queue=INTAKE_QUEUE).set(backlog)
        for status, count in counts.items():
            metrics.tasks.labels(status=status).set(count)
        # Cleared first, so a removed or re-tiered worker leaves no stale series behind (all on
        # the loop: a scrape sees the old set or the new one, never a gap).
        for gauge in (metrics.worker_load, metrics.worker_capacity, metrics.worker_online):
            gauge.clear()
        for worker in self.state.pool.workers.values():
            metrics.worker_load.labels(worker.worker_id, worker.tier.value).set(worker.load)
            metrics.worker_capacity.labels(worker.worker_id, worker.tier.value).set(worker.capacity)
            metrics.worker_online.labels(worker.worker_id).set(int(worker.online))
