"""Everything the dispatcher leader publishes, on one channel with publisher confirms."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from rabbitmq.topology import (
    DEAD_EXCHANGE,
    EVENTS_EXCHANGE,
    NOTIFY_QUEUE,
    ORIGIN_HEADER,
    REASON_HEADER,
    SUBMIT_ROUTING_KEY,
    TASKS_EXCHANGE,
    TOKEN_HEADER,
    worker_queue_name,
)

log = logging.getLogger(__name__)


def json_message(
    body: Any, *, priority: int = 0, type_: str | None = None, headers: dict[str, Any] | None = None
) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(body, separators=(",", ":"), default=str).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=priority,
        type=type_,
        headers=headers or {},
    )


class MeshPublisher:
    """Publishes with confirms; callers gather the returned awaitables to pipeline them.

    The mesh's own events go on a second channel without confirms: they tell other services
    what happened, while the database stays the record, so they are sent at most once and
    never hold up a dispatch.
    """

    def __init__(self, channel: AbstractChannel, events_channel: AbstractChannel) -> None:
        self.channel = channel
        self.events_channel = events_channel
        self._sending: set[asyncio.Future[Any]] = set()
        self._exchanges: dict[tuple[int, str], aio_pika.abc.AbstractExchange] = {}

    async def _exchange(
        self, name: str, channel: AbstractChannel | None = None
    ) -> aio_pika.abc.AbstractExchange:
        """The exchange by name on a channel, built once (declared with the topology)."""
        channel = channel or self.channel
        key = (id(channel), name)
        if key not in self._exchanges:
            self._exchanges[key] = await channel.get_exchange(name, ensure=False)
        return self._exchanges[key]

    def assignment(self, worker_id: str, body: dict[str, Any], priority: int) -> Awaitable[Any]:
        return self.channel.default_exchange.publish(
            json_message(body, priority=priority, type_="assignment"),
            routing_key=worker_queue_name(worker_id),
        )

    def cancel_notice(self, worker_id: str, task_id: str) -> Awaitable[Any]:
        """The notice that a task on this worker was cancelled (docs/contract.md, 4.4)."""
        return self.channel.default_exchange.publish(
            json_message({"task_id": task_id}, priority=9, type_="cancel"),
            routing_key=worker_queue_name(worker_id),
            mandatory=False,  # a removed worker's queue is gone, and so is whom to tell
        )

    async def intake(self, body: dict[str, Any], priority: int) -> None:
        exchange = await self._exchange(TASKS_EXCHANGE)
        await exchange.publish(
            json_message(body, priority=priority, headers={ORIGIN_HEADER: "mesh"}),
            routing_key=SUBMIT_ROUTING_KEY,
        )

    def retry(self, queue_name: str, body: dict[str, Any], priority: int) -> Awaitable[Any]:
        return self.channel.default_exchange.publish(
            json_message(body, priority=priority, headers={ORIGIN_HEADER: "mesh"}),
            routing_key=queue_name,
        )

    async def event(self, routing_key: str, body: dict[str, Any]) -> None:
        exchange = await self._exchange(EVENTS_EXCHANGE, self.events_channel)
        await exchange.publish(
            json_message(body, headers={ORIGIN_HEADER: "mesh"}),
            routing_key=routing_key,
            # Nobody may be listening; a returned message would only cost a frame each.
            mandatory=False,
        )

    def event_soon(self, routing_key: str, body: dict[str, Any]) -> None:
        """Send an event without waiting for it; a failure is logged, not raised."""
        self._soon(self.event(routing_key, body))

    def notice_soon(self, body: dict[str, Any]) -> None:
        """Hand an assignment to the notifier (workmesh.notify), like an event: at most once."""
        self._soon(
            self.events_channel.default_exchange.publish(
                json_message(body, headers={ORIGIN_HEADER: "mesh"}), routing_key=NOTIFY_QUEUE
            )
        )

    def _soon(self, sending: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(sending)
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Future[Any]) -> None:
        self._sending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("mesh event not sent: %r", task.exception())

    async def dead_letter(
        self,
        body: bytes,
        reason: str,
        source: str,
        headers: dict[str, Any] | None = None,
        routing_key: str = "",
    ) -> None:
        """Send a message that can never succeed to workmesh.dead, saying why.

        The token header is dropped: dead letters are read by operators, not by the holder.
        """
        kept = {k: v for k, v in (headers or {}).items() if k != TOKEN_HEADER}
        kept.update({REASON_HEADER: reason, "x-workmesh-source": source})
        exchange = await self._exchange(DEAD_EXCHANGE)
        await exchange.publish(
            aio_pika.Message(
                body,
                headers=kept,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
            ),
            routing_key=routing_key,
        )
        log.warning("dead-lettered a message from %s: %s", source, reason)

    async def dead_letter_message(
        self, message: AbstractIncomingMessage, reason: str, source: str
    ) -> None:
        await self.dead_letter(
            message.body, reason, source, dict(message.headers or {}), message.routing_key or ""
        )


async def gather_confirms(pending: Iterable[Awaitable[Any]]) -> None:
    """Wait for a group of publishes together: one round of confirms instead of one each."""
    await asyncio.gather(*pending)
