"""Snapshots go to the peer in batches, one batch at a time per shard.

A shard's consumer hands each order id it is told about to the shard's sender and waits until
a batch holding that order has been sent and its outcome recorded; only then is the message
acknowledged. One batch at a time per shard keeps an order's snapshots in order. While a batch
is on its way the next one gathers, so the busier the shard the fuller its batches, and a lone
change still goes at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

Send = Callable[[list[str]], Awaitable[None]]


class BatchSender:
    def __init__(self, send: Send, batch_size: int) -> None:
        self._send = send
        self._batch_size = batch_size
        # Order id → the consumers waiting for it; an id named again while its batch is on
        # the way waits for the next batch (its snapshot may have changed since).
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, order_id: str) -> None:
        """Return once a batch holding ``order_id`` has gone; raise what sending it raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(order_id, []).append(done)
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        while self._waiting:
            batch = list(itertools.islice(self._waiting, self._batch_size))
            waiters = [w for order_id in batch for w in self._waiting.pop(order_id)]
            try:
                await self._send(batch)
            except Exception as error:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
