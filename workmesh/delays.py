"""Deliver a message to a queue later, with RabbitMQ alone: no sleeping task, no cron.

Each (target queue, delay) pair gets a durable queue ``<target>.delay.<ms>ms`` with that TTL and
the target as its dead-letter route; a message published there waits in RabbitMQ and is
dead-lettered into the target when its time is up. So a schedule survives a restart of the mesh
(and of RabbitMQ: the queues are durable, the messages persistent), and thousands of pending
messages cost no task and no timer in the process. One queue per delay keeps every message in
it expiring in the order it was published: RabbitMQ expires only at a queue's head, so mixing
delays in one queue (per-message TTL) would hold a short delay behind a long one.

The target queue must exist when the time is up: a message dead-lettered to a missing queue is
dropped by RabbitMQ. Capabilities declare their queues at start, before they schedule anything.
"""

from __future__ import annotations

from typing import Any

from faststream.rabbit import RabbitBroker, RabbitQueue


class Delays:
    def __init__(self, broker: RabbitBroker) -> None:
        self._broker = broker
        self._declared: set[str] = set()

    async def publish_later(
        self, message: Any, *, queue: str, delay: float, **publish: Any
    ) -> None:
        """Publish ``message`` so that it reaches ``queue`` after ``delay`` seconds.

        ``publish`` takes FastStream's publish options (``message_id``, ``headers``,
        ``correlation_id``...); the message is always persistent.
        """
        name = await self.declare(queue, delay)
        await self._broker.publish(message, routing_key=name, persist=True, **publish)

    async def declare(self, queue: str, delay: float) -> str:
        """Declare the delay queue for ``queue`` and ``delay`` (idempotent); returns its name."""
        if delay <= 0:
            raise ValueError(f"a delay must be positive, not {delay}")
        ms = max(1, round(delay * 1000))
        name = f"{queue}.delay.{ms}ms"
        if name not in self._declared:
            await self._broker.declare_queue(
                RabbitQueue(
                    name,
                    durable=True,
                    arguments={
                        "x-message-ttl": ms,
                        # The default exchange routes by queue name: straight into the target.
                        "x-dead-letter-exchange": "",
                        "x-dead-letter-routing-key": queue,
                    },
                )
            )
            self._declared.add(name)
        return name
