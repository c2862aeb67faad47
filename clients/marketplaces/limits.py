"""Client-side limiters that keep a marketplace's published limits as the server counts them.

A request is charged to the window when its response arrives, not when it is sent: the server
counted it on arrival, which came before our response, so a window measured from the response
can never be shorter than the server's. In-flight requests hold a slot until then.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass


@dataclass
class Charge:
    """What one request costs; a handler raises it for answers the server charges more for."""

    cost: int = 1


class SlidingWindow:
    """At most ``limit`` request costs in any ``window`` seconds."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a window needs a positive limit and length")
        self.limit, self.window = limit, window
        self._clock = clock
        self._charged: deque[float] = deque()  # one entry per cost unit, in arrival order
        self._in_flight = 0
        self._changed = asyncio.Event()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Charge]:
        await self._acquire()
        charge = Charge()
        try:
            yield charge
        finally:
            self._in_flight -= 1
            now = self._clock()
            self._charged.extend([now] * charge.cost)
            self._changed.set()

    def used(self) -> int:
        self._expire(self._clock())
        return self._in_flight + len(self._charged)

    def _expire(self, now: float) -> None:
        while self._charged and self._charged[0] <= now - self.window:
            self._charged.popleft()

    async def _acquire(self) -> None:
        while True:
            now = self._clock()
            self._expire(now)
            if self._in_flight + len(self._charged) < self.limit:
                self._in_flight += 1
                return
            # The oldest charge leaves the window at a known time; a response may free a
            # slot sooner (or add cost), so wake on either.
            timeout = self._charged[0] + self.window - now if self._charged else None
            self._changed.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)


class InFlight:
    """At most ``limit`` requests at once (Yandex Market answers 420 past four)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._semaphore = asyncio.Semaphore(limit)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Charge]:
        async with self._semaphore:
            yield Charge()
