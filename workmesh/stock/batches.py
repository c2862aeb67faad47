"""Batch planning for the pusher: which pending items go together in which request."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

Item = TypeVar("Item")


def plan_batches(
    items: Sequence[Item], size: int, group: Callable[[Item], Hashable], most: int
) -> list[list[Item]]:
    """At most ``most`` batches of at most ``size`` items, each from one group (a warehouse,
    a campaign), fullest batches first so every request carries as much as it may."""
    if size < 1 or most < 1:
        raise ValueError("batch size and count must be positive")
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        groups.setdefault(group(item), []).append(item)
    batches = [
        members[start : start + size]
        for members in groups.values()
        for start in range(0, len(members), size)
    ]
    batches.sort(key=len, reverse=True)
    return batches[:most]
