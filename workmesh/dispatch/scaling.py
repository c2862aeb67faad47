"""The seed's two ways to size the pool of reserve workers.

* ``step``: at each review, one reserve more when tasks wait and every engaged worker is full,
  one less when nothing waits and an engaged reserve has sat idle.
* ``threshold``: the whole reserve count at once, from the queue length averaged over a window
  and a table of thresholds.

Both return the desired number of engaged reserve workers; the pool engages that many and the
number is published (``pool.scale``, a gauge) for external autoscalers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PoolView:
    backlog: int  # tasks waiting in RabbitMQ
    free_capacity: int  # room left on eligible workers
    engaged: int  # reserves in work now
    idle_engaged: int  # engaged reserves idle for longer than the reserve idle time
    available: int  # online reserves that could be engaged


class ScalingPolicy(Protocol):
    def desired(self, now: float, view: PoolView) -> int: ...


class StepPolicy:
    def desired(self, now: float, view: PoolView) -> int:
        if view.backlog > 0 and view.free_capacity == 0:
            return min(view.engaged + 1, view.available)
        if view.backlog == 0 and view.idle_engaged > 0:
            return view.engaged - 1
        return min(view.engaged, view.available)


@dataclass
class ThresholdPolicy:
    thresholds: list[tuple[int, int]]  # (queue length, reserve count), ascending
    window: float
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def desired(self, now: float, view: PoolView) -> int:
        self._samples.append((now, view.backlog))
        while self._samples and self._samples[0][0] < now - self.window:
            self._samples.popleft()
        average = sum(n for _, n in self._samples) / len(self._samples)
        count = 0
        for length, reserves in self.thresholds:
            if average >= length:
                count = reserves
        return min(count, view.available)
