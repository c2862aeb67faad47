"""The dispatcher process: wait to lead, then run intake, reports and review until stopped.

Any number of dispatcher processes may run; the one that holds the exclusive lock queue leads
and the rest wait. If the leader dies, RabbitMQ drops its lock with its connection, requeues
every message it had taken and not acknowledged, and the next process takes over from the
database. After a broker restart the same path reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rabbitmq.topology import (
    LEADER_LOCK_QUEUE,
    REPORTS_QUEUE,
    declare_topology,
)
from workmesh.dispatch.pool import WorkerPool
from workmesh.engine.cycle import LeaderCycle
from workmesh.engine.intake import Intake
from workmesh.engine.publisher import MeshPublisher
from workmesh.engine.reports import ReportApplier
from workmesh.engine.review import PoolReview
from workmesh.engine.state import LeaderState
from workmesh.engine.store import turn_store
from workmesh.metrics import Metrics
from workmesh.settings import Settings

log = logging.getLogger(__name__)

REPORTS_PREFETCH = 512
STANDBY_RETRY = 1.0
RECONNECT_DELAY = 1.0
GRACE_SECONDS = 10.0


class Dispatcher:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], metrics: Metrics
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.leading = asyncio.Event()
        self.ready = asyncio.Event()  # connected, as leader or standby

    async def run(self) -> None:
        """Lead or stand by until cancelled; reconnects after any connection loss."""
        while True:
            try:
                connection = await aio_pika.connect(self.settings.amqp.url)
            except (OSError, aiormq.exceptions.AMQPError) as error:
                log.warning("cannot reach RabbitMQ (%s); retrying", error)
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            try:
                async with connection:
                    await self._serve(connection)
            except (
                aiormq.exceptions.AMQPError,
                ConnectionError,
                asyncio.IncompleteReadError,
            ) as error:
                log.warning("dispatcher lost RabbitMQ (%r); starting over", error)
            except Exception:
                # A database outage or a bug: leave the lead (RabbitMQ requeues what we held)
                # and start over from the database rather than carry on with a doubtful state.
                log.exception("dispatcher failed; starting over")
            finally:
                self.leading.clear()
                self.ready.clear()
                self.metrics.forget_leader_view()
            _stop_if_cancelled()
            await asyncio.sleep(RECONNECT_DELAY)

    async def _serve(self, connection: AbstractConnection) -> None:
        setup = await connection.channel()
        await declare_topology(setup, self.settings.dispatch.retry_delays)
        self.ready.set()
        await self._acquire_lead(connection)
        log.info("this dispatcher leads")
        self.metrics.leader.set(1)
        self.leading.set()

        publisher = MeshPublisher(
            await connection.channel(publisher_confirms=True),
            await connection.channel(publisher_confirms=False),
        )
        state = LeaderState(
            settings=self.settings,
            sessions=self.sessions,
            metrics=self.metrics,
            publisher=publisher,
            pool=WorkerPool(
                self.settings.dispatch.heartbeat_timeout, self.settings.dispatch.reserve_idle
            ),
            store=turn_store(
                self.settings.database.url,
                self.sessions,
                self.settings.database.sqlite_synchronous,
            ),
        )
        try:
            await self._lead(connection, state)
        finally:
            await state.store.close()

    async def _lead(self, connection: AbstractConnection, state: LeaderState) -> None:
        review = PoolReview(state, await connection.channel())
        await state.reload()
        await review.review()

        intake = await Intake.open(connection, state)

        reports_channel = await connection.channel()
        await reports_channel.set_qos(prefetch_count=REPORTS_PREFETCH)
        reports = ReportApplier(state)
        reports_queue = await reports_channel.get_queue(REPORTS_QUEUE, ensure=False)
        await reports_queue.consume(reports.receive, no_ack=False)

        closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        def on_close(_connection: object, error: BaseException | None = None) -> None:
            if not closed.done():
                closed.set_result(error)

        connection.close_callbacks.add(on_close)
        loops = [
            asyncio.create_task(LeaderCycle(state, intake, reports).run(), name="cycle"),
            asyncio.create_task(review.run(), name="review"),
        ]
        try:
            waiters: list[asyncio.Future[Any]] = [*loops, closed]
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                error = finished.exception() if finished is not closed else None
                if error is not None:
                    raise error
            raise ConnectionError("RabbitMQ connection closed")
        finally:
            for task in loops:
                await cancel_and_wait(task)
            if state.in_flight:
                # Graceful stop: batches already taken finish (commit, publish, ack) before
                # the connection closes; anything not yet taken stays in RabbitMQ.
                await asyncio.wait(state.in_flight, timeout=GRACE_SECONDS)

    async def _acquire_lead(self, connection: AbstractConnection) -> None:
        while True:
            channel = await connection.channel()
            try:
                await channel.declare_queue(LEADER_LOCK_QUEUE, exclusive=True, durable=False)
                return
            except aiormq.exceptions.ChannelLockedResource:
                log.debug("another dispatcher leads; standing by")
            await asyncio.sleep(STANDBY_RETRY)


def _stop_if_cancelled() -> None:
    """Being stopped can surface as a closed-channel error rather than CancelledError; a
    dispatcher that is being cancelled must leave, not reconnect."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end. The AMQP client can swallow a cancellation
    that lands inside one of its calls (a basic.get, a consumer cancel), so ask again
    until the task is really gone."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
