"""Reading the dead letters in ``workmesh.dead``: look at them, or move them to a file.

Every message the mesh gives up on is published there with a reason (docs/contract.md,
section 7); messages RabbitMQ itself dead-letters (an assignment a worker rejected, one that
outlived a limit) carry RabbitMQ's ``x-death`` record instead. Nothing in the mesh ever takes
them off the queue: an operator does, with ``workmesh dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import IO, Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from rabbitmq.topology import DEAD_QUEUE, REASON_HEADER

SOURCE_HEADER = "x-workmesh-source"
# Dead letters written (and synced) per acknowledgement when moving them to a file.
MOVE_BATCH = 200


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    source: str
    routing_key: str
    headers: dict[str, Any]
    body: str

    @classmethod
    def of(cls, message: AbstractIncomingMessage) -> DeadLetter:
        headers = dict(message.headers or {})
        return cls(
            reason=reason_of(headers),
            source=text(headers.get(SOURCE_HEADER))
            or text(headers.get("x-first-death-queue"))
            or "unknown",
            routing_key=message.routing_key or "",
            headers=_plain(headers),
            body=message.body.decode("utf-8", errors="replace"),
        )

    def as_json(self) -> str:
        return json.dumps(
            {
                "reason": self.reason,
                "source": self.source,
                "routing_key": self.routing_key,
                "headers": self.headers,
                "body": self.body,
            },
            ensure_ascii=False,
        )


@asynccontextmanager
async def dead_queue(amqp_url: str) -> AsyncIterator[AbstractQueue]:
    """The dead-letter queue, which must exist (the mesh declares it at start)."""
    connection = await asyncio.wait_for(aio_pika.connect(amqp_url), timeout=5)
    async with connection:
        channel = await connection.channel()
        try:
            yield await channel.declare_queue(DEAD_QUEUE, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            raise LookupError(
                f"queue {DEAD_QUEUE} does not exist: has the mesh run on this RabbitMQ "
                "(and vhost) yet?"
            ) from None


async def peek(amqp_url: str, limit: int) -> tuple[int, list[DeadLetter]]:
    """The count and the first ``limit`` dead letters, all left in the queue.

    They are taken unacknowledged and put back when the channel closes, so they keep their
    place at the head of the queue.
    """
    async with dead_queue(amqp_url) as queue:
        count = int(queue.declaration_result.message_count or 0)
        letters = []
        for _ in range(min(limit, count)):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letters.append(DeadLetter.of(message))
        return count, letters


async def move_to(
    amqp_url: str, out: IO[str], limit: int | None, progress: Callable[[int, int], None]
) -> int:
    """Write dead letters to ``out`` as JSON lines and take them off the queue; returns how
    many. Each batch is acknowledged only after it is on disk (flushed and, for a file,
    synced), so an interruption loses none: at worst some are in the file and still queued.
    ``progress(moved, expected)`` follows each batch.
    """
    moved = 0
    async with dead_queue(amqp_url) as queue:
        expected = int(queue.declaration_result.message_count or 0)
        if limit is not None:
            expected = min(expected, limit)
        while limit is None or moved < limit:
            batch: list[AbstractIncomingMessage] = []
            while len(batch) < MOVE_BATCH and (limit is None or moved + len(batch) < limit):
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                batch.append(message)
            if not batch:
                break
            for message in batch:
                out.write(DeadLetter.of(message).as_json() + "\n")
            _sync(out)
            await batch[-1].ack(multiple=True)
            moved += len(batch)
            progress(len(batch), max(expected, moved))
    return moved


def _sync(out: IO[str]) -> None:
    out.flush()
    with contextlib.suppress(OSError, ValueError):  # a pipe or a terminal: flushed is all
        os.fsync(out.fileno())


def reason_of(headers: dict[str, Any]) -> str:
    """Why a message was dead-lettered: the mesh's reason header, or RabbitMQ's record."""
    reason = text(headers.get(REASON_HEADER))
    if reason:
        return reason
    # Dead-lettered by RabbitMQ itself (a nack without requeue, an expiry): x-death says why.
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        first = deaths[0]
        return f"RabbitMQ: {text(first.get('reason'))} in {text(first.get('queue'))}"
    return "no reason given"


def text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _plain(value: Any) -> Any:
    """Header values as JSON can hold them (AMQP tables hold bytes and datetimes too)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
