"""A worker's AMQP queue, read on the worker's behalf for its HTTP and WebSocket channels.

The dispatcher always publishes a worker's assignments to its queue, whatever channel the
worker uses, so least load and priority are the dispatcher's as for every worker, and the
queue's own priority order is the hand-out order. Every live channel is a consumer on that
queue (a WebSocket session, a waiting long poll, an AMQP bot), which is also how the notifier
tells a live worker from one to notify.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from models import Task
from models.base import utcnow
from rabbitmq.topology import worker_queue_name
from workmesh.services import leases
from workmesh.services.group_commit import GroupCommit


@dataclass(frozen=True)
class Delivery:
    kind: Literal["assignment", "cancel"]
    body: dict[str, Any]  # for an assignment: the assignment plus ``leased_until``


@dataclass(frozen=True)
class Taken:
    deliveries: list[Delivery]
    # Whether the channel holds nothing of the worker's: with basic.get alone, every message
    # taken was acknowledged. After a wait as a consumer, a message may have come in after the
    # wait was over, unacknowledged; only closing the channel gives it back for sure.
    channel_clean: bool


class Mailbox:
    def __init__(self, writes: GroupCommit, lease: float) -> None:
        self.writes = writes  # leases go in transactions shared with other hand-outs and reports
        self.lease = lease

    async def open(self, channel: AbstractChannel, worker_id: str) -> AbstractQueue:
        # Passive: the mesh declares worker queues; a worker's channel never makes one.
        return await channel.declare_queue(worker_queue_name(worker_id), passive=True)

    async def admit(
        self, worker_id: str, message: AbstractIncomingMessage
    ) -> tuple[Delivery | None, datetime | None]:
        """What the message means for the worker now, leasing an assignment to it.

        Returns (None, None) for a message that is no longer true (the caller acknowledges and
        drops it), and the lease's end for an assignment. Commits before returning, so the
        caller acknowledges after the lease is on record.
        """
        try:
            body = json.loads(message.body)
        except ValueError:
            return None, None
        if not isinstance(body, dict) or not isinstance(body.get("task_id"), str):
            return None, None
        if message.type == "cancel":
            return Delivery("cancel", {"task_id": body["task_id"]}), None
        until = utcnow() + timedelta(seconds=self.lease)

        async def lease(session: AsyncSession) -> Task | None:
            return await leases.hand_out(
                session, body["task_id"], worker_id, until, bool(message.redelivered)
            )

        for _ in range(3):
            try:
                task = await self.writes.run(lease, reads=[(Task.id, body["task_id"])])
                break
            except StaleDataError:
                continue  # the dispatcher or the API changed it meanwhile: read it again
        else:
            return None, None
        if task is None:
            return None, None
        return Delivery("assignment", {**body, "leased_until": until.isoformat()}), until

    async def take(
        self, channel: AbstractChannel, worker_id: str, limit: int, wait: float
    ) -> Taken:
        """Up to ``limit`` deliveries, waiting at most ``wait`` seconds for the first one.

        Everything returned is acknowledged to RabbitMQ (an HTTP answer cannot be taken back);
        an assignment's lease covers it from here.
        """
        queue = await self.open(channel, worker_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        out: list[Delivery] = []
        consumed = False
        while len(out) < limit:
            messages: list[AbstractIncomingMessage] = []
            while len(out) + len(messages) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                messages.append(message)
            if not messages:
                if out or loop.time() >= deadline:
                    break
                consumed = True
                message = await self._next(channel, queue, deadline - loop.time())
                if message is None:
                    break
                messages.append(message)
            # Leased together, in one transaction; some may turn out stale, hence the loop.
            for message, (delivery, _) in zip(
                messages, await self.admit_all(worker_id, messages), strict=True
            ):
                await message.ack()
                if delivery is not None:
                    out.append(delivery)
        return Taken(out, channel_clean=not consumed)

    async def admit_all(
        self, worker_id: str, messages: list[AbstractIncomingMessage]
    ) -> list[tuple[Delivery | None, datetime | None]]:
        """``admit`` for each message, in its order, their leases in one shared transaction."""
        return list(await asyncio.gather(*(self.admit(worker_id, m) for m in messages)))

    async def _next(
        self, channel: AbstractChannel, queue: AbstractQueue, within: float
    ) -> AbstractIncomingMessage | None:
        """Wait for one message as a consumer (a waiting long poll is a live channel).

        A message that arrives after the wait is over stays unacknowledged and goes back to the
        queue when the caller closes the channel.
        """
        await channel.set_qos(prefetch_count=1)
        arrived: asyncio.Future[AbstractIncomingMessage] = (
            asyncio.get_running_loop().create_future()
        )

        async def on_message(message: AbstractIncomingMessage) -> None:
            if not arrived.done():
                arrived.set_result(message)

        tag = await queue.consume(on_message)
        try:
            return await asyncio.wait_for(asyncio.shield(arrived), within)
        except TimeoutError:
            return None
        finally:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
