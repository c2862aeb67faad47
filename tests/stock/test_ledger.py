"""The ledger's rules: every event may come twice, late or out of order; stock counts once."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schemas.stock import EventKind
from workmesh.stock.ledger import LineState, move_line

LINE_EVENTS = [EventKind.RESERVE, EventKind.ORDER, EventKind.CANCEL]


def replay(events: list[EventKind], quantity: int) -> tuple[LineState | None, int, int]:
    state: LineState | None = None
    on_hand = reserved = 0
    for kind in events:
        movement = move_line(state, kind, quantity)
        state, on_hand, reserved = (
            movement.state,
            on_hand + movement.on_hand,
            reserved + movement.reserved,
        )
    return state, on_hand, reserved


def test_order_takes_stock_and_cancel_gives_it_back() -> None:
    assert replay([EventKind.ORDER], 3) == (LineState.ORDERED, -3, 0)
    assert replay([EventKind.ORDER, EventKind.CANCEL], 3) == (LineState.CANCELLED, 0, 0)


def test_reserve_holds_then_order_takes() -> None:
    assert replay([EventKind.RESERVE], 2) == (LineState.RESERVED, 0, 2)
    assert replay([EventKind.RESERVE, EventKind.ORDER], 2) == (LineState.ORDERED, -2, 0)
    assert replay([EventKind.RESERVE, EventKind.CANCEL], 2) == (LineState.CANCELLED, 0, 0)


def test_an_order_seen_twice_counts_once() -> None:
    assert replay([EventKind.ORDER, EventKind.ORDER], 5) == (LineState.ORDERED, -5, 0)


def test_an_order_after_its_cancellation_changes_nothing() -> None:
    assert replay([EventKind.CANCEL, EventKind.ORDER], 5) == (LineState.CANCELLED, 0, 0)


@given(st.lists(st.sampled_from(LINE_EVENTS), max_size=12), st.integers(1, 50))
def test_repeating_any_history_changes_nothing(events: list[EventKind], quantity: int) -> None:
    once = replay(events, quantity)
    doubled = replay([e for e in events for _ in (0, 1)], quantity)
    assert once == doubled


@given(st.lists(st.sampled_from(LINE_EVENTS), max_size=12), st.integers(1, 50))
def test_stock_held_always_matches_the_line_state(events: list[EventKind], quantity: int) -> None:
    state, on_hand, reserved = replay(events, quantity)
    expected = {
        None: (0, 0),
        LineState.RESERVED: (0, quantity),
        LineState.ORDERED: (-quantity, 0),
        LineState.CANCELLED: (0, 0),
    }[state]
    assert (on_hand, reserved) == expected
