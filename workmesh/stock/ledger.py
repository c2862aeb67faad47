"""The stock ledger's rules: what a marketplace event does to an order line and to stock.

An order line moves through reserve → order → cancel; an event that would move it back (an
order seen again by an overlapping poll, a reserve seen after its order) changes nothing, so
every event may arrive twice, late or out of order and stock is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from schemas.stock import EventKind


class LineState(StrEnum):
    RESERVED = "reserved"  # held: counted in ``reserved``
    ORDERED = "ordered"  # sold: taken off ``on_hand``
    CANCELLED = "cancelled"  # gone: nothing held, nothing taken


@dataclass(frozen=True)
class Movement:
    """Where the line goes and what happens to the product's stock."""

    state: LineState | None
    on_hand: int = 0
    reserved: int = 0


# How far along each state is; a line never moves to an earlier rank.
_RANK = {None: 0, LineState.RESERVED: 1, LineState.ORDERED: 2, LineState.CANCELLED: 3}


def move_line(state: LineState | None, kind: EventKind, quantity: int) -> Movement:
    """The movement for a reserve, order or cancel event on a line in ``state``."""
    target = {
        EventKind.RESERVE: LineState.RESERVED,
        EventKind.ORDER: LineState.ORDERED,
        EventKind.CANCEL: LineState.CANCELLED,
    }.get(kind)
    if target is None:
        raise ValueError(f"{kind} is not a line event")
    if _RANK[target] <= _RANK[state]:
        return Movement(state)  # seen before, or news older than what we know
    # Undo what the line holds now, then apply what the target state holds.
    on_hand = quantity if state is LineState.ORDERED else 0
    reserved = -quantity if state is LineState.RESERVED else 0
    if target is LineState.RESERVED:
        reserved += quantity
    elif target is LineState.ORDERED:
        on_hand -= quantity
    return Movement(target, on_hand, reserved)
