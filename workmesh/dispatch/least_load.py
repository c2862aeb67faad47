"""Least load: which worker gets the next task.

A worker's load is its unfinished tasks over its capacity. The task goes to the eligible
active worker with the lowest load that has room; ties go to the one that has waited longest
since its last assignment. Reserve workers are considered only when no active worker has room.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from schemas.workers import Tier


@dataclass(frozen=True)
class Candidate:
    worker_id: str
    tier: Tier
    capacity: int
    load: int
    last_assigned: float  # when (or in which order) it last got a task; lower = idle longer

    @property
    def has_room(self) -> bool:
        return self.load < self.capacity

    @property
    def ratio(self) -> Fraction:
        # Exact, so 1/3 and 2/6 tie instead of differing in the last float bit.
        return Fraction(self.load, self.capacity)


def pick_least_loaded(candidates: Iterable[Candidate], avoid: str | None = None) -> str | None:
    """The worker for the next task, or None when nobody eligible has room.

    ``avoid`` (the worker that just handed the task back) is passed over when anyone else
    has room, so a rejection does not bounce straight back to the same worker.
    """
    with_room = [c for c in candidates if c.has_room]
    for tier in (Tier.ACTIVE, Tier.RESERVE):
        tier_room = [c for c in with_room if c.tier is tier]
        preferred = [c for c in tier_room if c.worker_id != avoid] or tier_room
        if preferred:
            best = min(preferred, key=lambda c: (c.ratio, c.last_assigned, c.worker_id))
            return best.worker_id
    return None
