"""Least load, as a rule that must hold for every pool (hypothesis)."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from schemas.workers import Tier
from workmesh.dispatch.least_load import Candidate, pick_least_loaded


@st.composite
def candidates(draw: st.DrawFn) -> list[Candidate]:
    count = draw(st.integers(min_value=0, max_value=8))
    pool = []
    for i in range(count):
        capacity = draw(st.integers(min_value=1, max_value=6))
        pool.append(
            Candidate(
                worker_id=f"w{i}",
                tier=draw(st.sampled_from(list(Tier))),
                capacity=capacity,
                load=draw(st.integers(min_value=0, max_value=capacity)),
                last_assigned=draw(st.floats(min_value=0, max_value=100)),
            )
        )
    return pool


@given(candidates())
def test_the_pick_has_room_and_the_lowest_load_of_its_tier(pool: list[Candidate]) -> None:
    chosen = pick_least_loaded(pool)
    with_room = [c for c in pool if c.load < c.capacity]
    if not with_room:
        assert chosen is None
        return
    pick = next(c for c in pool if c.worker_id == chosen)
    assert pick.load < pick.capacity
    actives = [c for c in with_room if c.tier is Tier.ACTIVE]
    # Reserves only when no active worker has room.
    assert pick.tier is (Tier.ACTIVE if actives else Tier.RESERVE)
    same_tier = [c for c in with_room if c.tier is pick.tier]
    assert pick.ratio == min(c.ratio for c in same_tier)
    # Ties go to the one idle longest.
    tied = [c for c in same_tier if c.ratio == pick.ratio]
    assert pick.last_assigned == min(c.last_assigned for c in tied)


@given(candidates())
def test_avoided_worker_is_passed_over_when_another_has_room(pool: list[Candidate]) -> None:
    first = pick_least_loaded(pool)
    if first is None:
        return
    tier = next(c for c in pool if c.worker_id == first).tier
    others = [c for c in pool if c.tier is tier and c.load < c.capacity and c.worker_id != first]
    second = pick_least_loaded(pool, avoid=first)
    if others:
        assert second != first
    else:
        assert second is not None


def test_assigning_by_least_load_keeps_equal_workers_within_one() -> None:
    # Given three equal workers, when tasks are assigned one by one
    loads = {"a": 0, "b": 0, "c": 0}
    clock = 0.0
    last = dict.fromkeys(loads, 0.0)
    for _ in range(10):
        clock += 1
        pool = [Candidate(w, Tier.ACTIVE, 10, n, last[w]) for w, n in loads.items()]
        chosen = pick_least_loaded(pool)
        assert chosen is not None
        loads[chosen] += 1
        last[chosen] = clock
        # Then no worker is ever more than one task ahead of another
        assert max(loads.values()) - min(loads.values()) <= 1


def test_load_is_relative_to_capacity() -> None:
    big = Candidate("big", Tier.ACTIVE, capacity=10, load=3, last_assigned=0)
    small = Candidate("small", Tier.ACTIVE, capacity=2, load=1, last_assigned=0)
    assert big.ratio == Fraction(3, 10)
    assert pick_least_loaded([big, small]) == "big"
