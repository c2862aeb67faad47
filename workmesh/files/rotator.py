"""The consumer of due rotation messages, settling them in batches.

It runs on a connection of its own with plain aio-pika rather than as a FastStream
subscriber, for the same reason the dispatcher does: thousands of files renew every interval,
and one transaction, one set of confirmed publishes and one acknowledgement per batch cost a
fraction of doing each message alone. Messages that arrive while a batch is being settled
form the next batch; a batch that is not full waits ``rotation_linger`` seconds for more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from prometheus_client import Counter, Histogram
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.base import utcnow
from rabbitmq.topology import DEAD_EXCHANGE, EVENTS_EXCHANGE, REASON_HEADER
from schemas.files import RotationDue
from workmesh.files.bus import ROTATE_QUEUE
from workmesh.files.refers import BatchOutcome, Delivery, rotate_batch
from workmesh.files.rotation import RotationSchedule

log = logging.getLogger(__name__)

# Backoff before a failed batch is handed back to RabbitMQ (the database may be away).
RETRY_PAUSE = 1.0


class Rotator:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        sessions: async_sessionmaker[AsyncSession],
        schedule: RotationSchedule,
        public_url: Callable[[], str],
        batch: int,
        linger: float,
        lateness: Histogram,
        renewals: Counter,
        batch_size: Histogram,
    ) -> None:
        self.connection = connection
        self.sessions = sessions
        self.schedule = schedule
        self.public_url = public_url
        self.batch = batch
        self.linger = linger
        self.lateness = lateness
        self.renewals = renewals
        self.batch_size = batch_size
        self._inbox: list[AbstractIncomingMessage] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._events: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._stopping = False

    async def start(self) -> None:
        channel = await self.connection.channel(publisher_confirms=True)
        # Two batches in hand: one being settled, the next gathering.
        await channel.set_qos(prefetch_count=self.batch * 2)
        self._channel = channel
        self._events = await channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        self._dead = await channel.get_exchange(DEAD_EXCHANGE, ensure=False)
        self._queue = await channel.declare_queue(ROTATE_QUEUE, passive=True)
        self._task = asyncio.create_task(self._settle_forever(), name="files-rotator")
        self._tag = await self._queue.consume(self._take)

    async def stop(self) -> None:
        """Stop taking messages, finish the batch in hand; the rest go back to RabbitMQ."""
        if self._queue is not None and self._tag is not None:
            await self._queue.cancel(self._tag)
        self._inbox.clear()  # unacknowledged: redelivered when the channel closes
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            await self._task
        if self._channel is not None:
            await self._channel.close()

    async def _take(self, message: AbstractIncomingMessage) -> None:
        self._inbox.append(message)
        self._wake.set()

    async def _settle_forever(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self.linger and len(self._inbox) < self.batch:
                # Let the batch fill a moment: a transaction and a round of publishes per
                # few dozen renewals instead of per renewal is most of the CPU saved.
                await asyncio.sleep(self.linger)
            if self._stopping or not self._inbox:
                continue
            batch, self._inbox = self._inbox[: self.batch], self._inbox[self.batch :]
            if self._inbox:
                self._wake.set()  # a full batch's leftovers: go again (without lingering)
            await self._settle(batch)

    async def _settle(self, messages: list[AbstractIncomingMessage]) -> None:
        deliveries: list[tuple[AbstractIncomingMessage, Delivery]] = []
        dead: list[tuple[AbstractIncomingMessage, str]] = []
        for message in messages:
            try:
                due = RotationDue.model_validate_json(message.body)
            except ValidationError as error:
                dead.append((message, f"invalid rotation message: {_first(error)}"))
            else:
                deliveries.append((message, Delivery(due, bool(message.redelivered))))
        try:
            outcome = BatchOutcome()
            if deliveries:
                async with self.sessions() as session, session.begin():
                    outcome = await rotate_batch(
                        session,
                        [d for _, d in deliveries],
                        self.schedule,
                        self.public_url(),
                        utcnow(),
                    )
            dead += [(m, d.dead_reason) for m, d in deliveries if d.dead_reason]
            await self._publish(outcome, dead)
        except Exception:
            log.exception("a batch of %d rotation messages failed; retrying", len(messages))
            await asyncio.sleep(RETRY_PAUSE)
            await messages[-1].nack(multiple=True, requeue=True)
            return
        for seconds in outcome.lateness:
            self.lateness.observe(max(0.0, seconds))
        self.renewals.inc(outcome.renewed)
        self.batch_size.observe(len(messages))
        # Batches are settled in delivery order, so one ack settles this whole batch.
        await messages[-1].ack(multiple=True)

    async def _publish(
        self, outcome: BatchOutcome, dead: list[tuple[AbstractIncomingMessage, str]]
    ) -> None:
        assert self._channel is not None
        assert self._events is not None
        assert self._dead is not None
        sends = [
            self._events.publish(
                aio_pika.Message(
                    a.encoded(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=uuid.uuid4().hex,
                ),
                routing_key=a.routing_key,
            )
            for a in outcome.announcements
        ]
        sends += [
            self._dead.publish(
                aio_pika.Message(
                    message.body,
                    content_type=message.content_type,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    headers={REASON_HEADER: reason, "x-workmesh-source": ROTATE_QUEUE},
                ),
                routing_key=ROTATE_QUEUE,
            )
            for message, reason in dead
        ]
        for message, reason in dead:
            log.warning("dead-lettered a rotation message %r: %s", message.body[:200], reason)
        await asyncio.gather(*sends)


def _first(error: ValidationError) -> str:
    e = error.errors()[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"


def decode_file_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("file_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None
