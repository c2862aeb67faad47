"""The ``orders`` capability: the Orders API, the sync consumers that push snapshots to the
peer instance, the resend sweep and the pull (both RabbitMQ delay chains)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, cast

from aiohttp import web
from faststream.rabbit import Channel, RabbitQueue
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from rabbitmq.topology import DEAD_EXCHANGE
from workmesh.capabilities import MeshContext
from workmesh.delays import Delays
from workmesh.orders import api, schedules, sync
from workmesh.orders.events import (
    EVENTS,
    OrderChanged,
    changed_key,
    publish_changed,
    pull_queue,
    shard_of,
    sweep_queue,
    sync_queue,
)
from workmesh.orders.peer import Peer, PeerError
from workmesh.orders.sender import BatchSender
from workmesh.orders.settings import OrdersSettings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs

log = logging.getLogger(__name__)

_ARGS = cast("ClassicQueueArgs", {"x-dead-letter-exchange": DEAD_EXCHANGE})


class Tick(BaseModel):
    chain: str


class OrdersCapability:
    name = "orders"

    def __init__(self, settings: OrdersSettings | None = None) -> None:
        self.settings = settings or OrdersSettings()
        self.peer: Peer | None = None
        if self.settings.peer_url:
            self.peer = Peer(
                self.settings.peer_url,
                self.settings.peer_token,
                attempts=self.settings.http_attempts,
                timeout=self.settings.http_timeout,
            )
        self._sweep_queue = sweep_queue(self.settings.instance)
        self._pull_queue = pull_queue(self.settings.instance)
        self._mesh: MeshContext | None = None
        self._delays: Delays | None = None
        self._stopping = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def publish(self, order_id: str, rev: int) -> None:
        assert self._mesh is not None
        await publish_changed(
            self._mesh.broker, self.settings.instance, order_id, rev, self.settings.shards
        )

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self._mesh = mesh
        api.add_routes(
            app, mesh.sessions, self.publish, self.settings.instance, self.settings.db_parallel
        )
        for shard in range(self.settings.shards):
            self._attach_shard(mesh, shard)

        @mesh.broker.subscriber(RabbitQueue(self._sweep_queue, durable=True, arguments=_ARGS))
        async def on_sweep(body: Tick) -> None:
            await self._tick(schedules.SWEEP, body, self._sweep, self.settings.sweep_every)

        @mesh.broker.subscriber(RabbitQueue(self._pull_queue, durable=True, arguments=_ARGS))
        async def on_pull(body: Tick) -> None:
            await self._tick(schedules.PULL, body, self._pull, self.settings.pull_every)

    def _attach_shard(self, mesh: MeshContext, shard: int) -> None:
        sender = BatchSender(self._push, self.settings.sync_batch)

        @mesh.broker.subscriber(
            RabbitQueue(sync_queue(self.settings.instance, shard), durable=True,
                        routing_key=changed_key(self.settings.instance, shard),
                        arguments=_ARGS),
            exchange=EVENTS,
            # Enough unacknowledged events to fill the batch on its way and the next one.
            channel=Channel(prefetch_count=2 * self.settings.sync_batch),
        )  # fmt: skip
        async def on_changed(body: OrderChanged) -> None:
            if self.peer is None or self._stopping:
                return  # the outbox keeps it; the sweep sends it when there is a peer
            self._enter()
            try:
                await sender.submit(body.id)
            finally:
                self._leave()

    async def _push(self, order_ids: list[str]) -> None:
        assert self._mesh is not None
        assert self.peer is not None
        try:
            to_send = await sync.push_many(
                self._mesh.sessions, self.peer, self.settings.instance, order_ids
            )
        except SQLAlchemyError as error:
            # Not a reason to dead-letter the events: the orders stay in the outbox, and the
            # resend sweep sends them again.
            log.warning("orders: %d snapshots not sent (database: %s)", len(order_ids), error)
            return
        for order_id, rev in to_send:
            await self.publish(order_id, rev)

    def _enter(self) -> None:
        self._busy += 1
        self._idle.clear()

    def _leave(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._idle.set()

    async def _tick(
        self, name: str, body: Tick, work: Callable[[], Awaitable[datetime | None]], every: float
    ) -> None:
        assert self._mesh is not None
        assert self._delays is not None
        async with self._mesh.sessions() as session:
            if await schedules.is_live(session, name, body.chain) is None:
                return  # a message of an older chain
        error: str | None = None
        cursor = None
        self._enter()
        try:
            cursor = await work()
        except PeerError as problem:
            error = str(problem)
            log.info("orders %s: the peer is unavailable: %s", name, error)
        finally:
            self._leave()
        if self._stopping:
            return
        token = schedules.new_token()
        # The token is committed before its message exists (see workmesh/stock/schedules.py).
        async with self._mesh.sessions() as session, session.begin():
            await schedules.renew(session, name, token, cursor=cursor, error=error)
        queue = self._sweep_queue if name == schedules.SWEEP else self._pull_queue
        await self._delays.publish_later(Tick(chain=token), queue=queue, delay=every)

    async def _sweep(self) -> datetime | None:
        """Re-publish orders whose snapshot waited too long for delivery or for an answer."""
        assert self._mesh is not None
        if self.peer is None:
            return None
        async with self._mesh.sessions() as session:
            ids = await sync.due(session, self.settings.resend_after)
        for order_id in ids:
            await self._mesh.broker.publish(
                OrderChanged(id=order_id, rev=0), exchange=EVENTS,
                routing_key=changed_key(
                    self.settings.instance, shard_of(order_id, self.settings.shards)
                ),
                persist=True,
            )  # fmt: skip
        if ids:
            log.info("orders: re-sending %d orders", len(ids))
        return None

    async def _pull(self) -> datetime | None:
        assert self._mesh is not None
        if self.peer is None:
            return None
        async with self._mesh.sessions() as session:
            row = await session.get(schedules.OrdersSchedule, schedules.PULL)
            cursor = row.cursor if row is not None else None
        since = cursor - timedelta(seconds=self.settings.pull_overlap) if cursor else None
        to_send, newest = await sync.pull(
            self._mesh.sessions, self.peer, "peer", since, self.settings.pull_page
        )
        for order_id, rev in to_send:
            await self.publish(order_id, rev)
        return newest

    async def start(self) -> None:
        assert self._mesh is not None
        self._delays = Delays(self._mesh.broker)
        for name, queue in (
            (schedules.SWEEP, self._sweep_queue),
            (schedules.PULL, self._pull_queue),
        ):
            token = schedules.new_token()
            async with self._mesh.sessions() as session, session.begin():
                await schedules.take_over(session, name, token)
            await self._mesh.broker.publish(Tick(chain=token), queue=queue, persist=True)

    async def stop(self) -> None:
        self._stopping = True
        with suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.http_timeout)
        if self.peer is not None:
            await self.peer.close()
