"""Bitrix24's two limits, kept on our side so the portal never has to refuse us.

- Request rate: a leaky bucket per portal. Each HTTP request (a whole ``batch`` counts once)
  adds one; the bucket drains ``drain`` per second; at ``capacity`` the portal answers 503
  ``QUERY_LIMIT_EXCEEDED``. Standard plans: 50 and 2/s; enterprise: 250 and 5/s.
- Operating time: seconds of server time per method per 10 minutes (480 s). Every answer's
  ``time.operating`` says how much the method has used in the window and
  ``time.operating_reset_at`` when part of it is freed; past the limit the method answers
  429 ``OPERATION_TIME_LIMIT`` until then.

Waiting here is rate limiting, not scheduling: a caller waits only as long as the limit says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class LeakyBucket:
    """The portal's bucket as we model it: ``acquire`` returns once a request may go."""

    def __init__(
        self,
        capacity: float,
        drain_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or drain_per_second <= 0:
            raise ValueError("a bucket needs capacity >= 1 and a positive drain")
        self.capacity = capacity
        self.drain = drain_per_second
        self._clock = clock
        self._level = 0.0
        self._at = clock()
        self._lock = asyncio.Lock()

    def level(self) -> float:
        now = self._clock()
        return max(0.0, self._level - (now - self._at) * self.drain)

    def delay(self) -> float:
        """Seconds until one more request fits (0 when it fits now)."""
        return max(0.0, (self.level() + 1 - self.capacity) / self.drain)

    def take(self) -> None:
        now = self._clock()
        self._level = self.level() + 1
        self._at = now

    async def acquire(self) -> None:
        # One waiter at a time, so requests leave in the order they asked.
        async with self._lock:
            # The wait is computed from the drain rate: nothing would set an event earlier.
            while (wait := self.delay()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(wait)
            self.take()


@dataclass
class _MethodUse:
    operating: float = 0.0
    reset_at: float = 0.0  # unix seconds
    blocked_until: float = 0.0  # unix seconds, after a 429


class OperatingBudget:
    """What each method has used of its operating time, as the server last reported it."""

    def __init__(
        self,
        limit: float,
        *,
        margin: float = 0.1,
        blocked_pause: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Stop at (1 - margin) of the limit: calls in flight add time we have not seen yet.
        self.threshold = limit * (1 - margin)
        # How long a 429 without a reset time blocks the method.
        self.blocked_pause = blocked_pause
        self._clock = clock
        self._use: dict[str, _MethodUse] = {}

    def report(self, method: str, operating: float | None, reset_at: float | None) -> None:
        use = self._use.setdefault(method, _MethodUse())
        if operating is not None:
            use.operating = float(operating)
        if reset_at is not None:
            use.reset_at = float(reset_at)

    def blocked(self, method: str, reset_at: float | None) -> float:
        """A 429 for ``method``; returns the unix time it may be called again."""
        use = self._use.setdefault(method, _MethodUse())
        now = self._clock()
        if reset_at is None or reset_at <= now:
            reset_at = use.reset_at if use.reset_at > now else now + self.blocked_pause
        use.blocked_until = reset_at
        return reset_at

    def delay(self, methods: Iterable[str]) -> float:
        """Seconds to wait before calling all of ``methods``."""
        now = self._clock()
        wait = 0.0
        for method in methods:
            use = self._use.get(method)
            if use is None:
                continue
            if use.blocked_until > now:
                wait = max(wait, use.blocked_until - now)
            if use.operating >= self.threshold and use.reset_at > now:
                wait = max(wait, use.reset_at - now)
        return wait

    async def wait(self, methods: Iterable[str]) -> None:
        names = list(methods)
        # Sleep until the reset the server gave; nothing else frees operating time.
        while (pause := self.delay(names)) > 0:  # noqa: ASYNC110
            await asyncio.sleep(pause)
        now = self._clock()
        for name in names:
            use = self._use.get(name)
            # Past the reset the server frees time; until it says how much, assume all of it.
            if use is not None and use.reset_at and use.reset_at <= now:
                use.operating = 0.0
