"""Wakes the SSE streams of this process when a file's event is announced on
``workmesh.events``, by whichever process made it. The events themselves are read from the
database (the log), so a wake-up lost to a reconnect costs at most one keep-alive interval.

The process binds its private queue to ``file.#`` only while some stream listens, so a
mesh nobody watches pays nothing per renewal.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from rabbitmq.topology import EVENTS_EXCHANGE
from workmesh.files.events import ROUTING_PREFIX
from workmesh.files.rotator import decode_file_id

BINDING = ROUTING_PREFIX + "#"

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, connection: AbstractRobustConnection) -> None:
        self.connection = connection
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._queue: AbstractQueue | None = None
        self._bound = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        channel = await self.connection.channel()
        self._queue = await channel.declare_queue(
            f"workmesh.files.sse.{uuid.uuid4().hex[:12]}",
            exclusive=True,
            auto_delete=True,
            # Only a wake-up: an old one is worth nothing.
            arguments={"x-message-ttl": 10_000},
        )
        await self._queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        file_id = decode_file_id(message.body)
        for wake in self._waiters.get(file_id or "", ()):
            wake.set()

    @asynccontextmanager
    async def listen(self, file_id: str) -> AsyncIterator[asyncio.Event]:
        wake = asyncio.Event()
        self._waiters.setdefault(file_id, set()).add(wake)
        await self._rebind()
        try:
            yield wake
        finally:
            waiters = self._waiters[file_id]
            waiters.discard(wake)
            if not waiters:
                del self._waiters[file_id]
            await self._rebind()

    async def _rebind(self) -> None:
        async with self._lock:
            want = bool(self._waiters)
            if self._queue is None or want == self._bound:
                return
            try:
                if want:
                    await self._queue.bind(EVENTS_EXCHANGE, routing_key=BINDING)
                else:
                    await self._queue.unbind(EVENTS_EXCHANGE, routing_key=BINDING)
            except Exception:
                if want:
                    raise
                # Unbinding while the connection closes: the queue goes with it anyway.
                log.debug("could not unbind the SSE queue", exc_info=True)
            self._bound = want
