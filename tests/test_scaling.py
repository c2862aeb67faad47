"""Scaling policies and the pool's handling of reserve workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from schemas.workers import Tier
from workmesh.dispatch.pool import WorkerPool, WorkerRecord
from workmesh.dispatch.scaling import PoolView, StepPolicy, ThresholdPolicy
from workmesh.settings import DispatchSettings, SecuritySettings, parse_thresholds


def view(**kw: int) -> PoolView:
    base = {"backlog": 0, "free_capacity": 0, "engaged": 0, "idle_engaged": 0, "available": 3}
    return PoolView(**{**base, **kw})


def test_step_adds_one_reserve_when_tasks_wait_and_everyone_is_full() -> None:
    policy = StepPolicy()
    assert policy.desired(0, view(backlog=5, free_capacity=0, engaged=0)) == 1
    assert policy.desired(0, view(backlog=5, free_capacity=0, engaged=1)) == 2
    assert policy.desired(0, view(backlog=5, free_capacity=0, engaged=3)) == 3  # none left
    assert policy.desired(0, view(backlog=5, free_capacity=2, engaged=1)) == 1  # room left


def test_step_removes_one_reserve_when_idle() -> None:
    policy = StepPolicy()
    assert policy.desired(0, view(backlog=0, engaged=2, idle_engaged=2)) == 1
    assert policy.desired(0, view(backlog=0, engaged=2, idle_engaged=0)) == 2


def test_threshold_sets_the_whole_count_from_the_windowed_average() -> None:
    policy = ThresholdPolicy(parse_thresholds("10:1,50:2,200:3"), window=10)
    assert policy.desired(0, view(backlog=0)) == 0
    assert policy.desired(1, view(backlog=60)) == 1  # average of 0 and 60 is 30
    assert policy.desired(2, view(backlog=90)) == 2  # average 50
    assert policy.desired(20, view(backlog=500)) == 3  # older samples left the window
    assert policy.desired(21, view(backlog=500, available=1)) == 1  # only one reserve online


def test_thresholds_parse_and_refuse_nonsense() -> None:
    assert parse_thresholds(" 50:2, 10:1 ") == [(10, 1), (50, 2)]
    with pytest.raises(ValueError, match="queue_length:reserve_count"):
        parse_thresholds("ten:1")
    with pytest.raises(ValidationError):
        DispatchSettings(scaling_thresholds="5:-1")


def test_production_refuses_a_placeholder_admin_token() -> None:
    with pytest.raises(ValidationError, match="placeholder"):
        SecuritySettings(profile="production", admin_token="change-me")
    assert SecuritySettings(profile="production", admin_token="x" * 40).admin_token


def test_pool_marks_silent_workers_offline_and_engages_only_online_reserves() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    pool = WorkerPool(heartbeat_timeout=10, reserve_idle=5)
    records = [
        WorkerRecord("a", Tier.ACTIVE, 1, "h1", now),
        WorkerRecord("r1", Tier.RESERVE, 1, "h2", now),
        WorkerRecord("r2", Tier.RESERVE, 1, "h3", now - timedelta(seconds=30)),
    ]
    changes = pool.sync(records, now, 0.0)
    assert {(c.worker_id, c.event) for c in changes} == {("a", "online"), ("r1", "online")}
    assert pool.free_capacity() == 1  # the reserve is not engaged yet
    assert [c.event for c in pool.engage(2, 0.0)] == ["activated"]  # r2 is offline
    assert pool.free_capacity() == 2
    pool.assign("t1", "r1", 1.0)
    assert pool.engage(0, 100.0) == []  # busy: stays engaged
    pool.release("t1", 101.0)
    assert pool.engage(0, 103.0) == []  # idle, but not for long enough
    assert [c.event for c in pool.engage(0, 106.0)] == ["standby"]
    later = now + timedelta(seconds=11)
    changes = pool.sync(records, later, 107.0)
    assert {(c.worker_id, c.event) for c in changes} == {("a", "offline"), ("r1", "offline")}
    assert pool.free_capacity() == 0


def test_pool_takes_a_new_capacity_and_tier_at_the_next_sync() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    pool = WorkerPool(heartbeat_timeout=10, reserve_idle=5)
    pool.sync([WorkerRecord("a", Tier.ACTIVE, 1, "h1", now)], now, 0.0)
    pool.assign("t1", "a", 1.0)
    assert pool.free_capacity() == 0
    # More room: the same worker takes more
    assert pool.sync([WorkerRecord("a", Tier.ACTIVE, 3, "h1", now)], now, 2.0) == []
    assert pool.free_capacity() == 2
    # Made a reserve: it stands by (announced), keeps its task, and takes no more
    changes = pool.sync([WorkerRecord("a", Tier.RESERVE, 3, "h1", now)], now, 3.0)
    assert [(c.worker_id, c.event) for c in changes] == [("a", "standby")]
    assert (pool.free_capacity(), pool.workers["a"].load) == (0, 1)
    # Engaged by the policy, then made active again: eligible, disengaged, nothing announced
    assert [c.event for c in pool.engage(1, 4.0)] == ["activated"]
    assert pool.sync([WorkerRecord("a", Tier.ACTIVE, 3, "h1", now)], now, 5.0) == []
    assert (pool.workers["a"].engaged, pool.free_capacity()) == (False, 2)


def test_pool_announces_a_removed_worker_and_forgets_it_when_told() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    pool = WorkerPool(heartbeat_timeout=10, reserve_idle=5)
    records = [
        WorkerRecord("a", Tier.ACTIVE, 2, "h1", now),
        WorkerRecord("b", Tier.ACTIVE, 1, "h2", now),
    ]
    pool.sync(records, now, 0.0)
    pool.assign("t1", "b", 1.0)
    # b is no longer among the live workers: announced once, takes nothing, token void
    assert [(c.worker_id, c.event) for c in pool.sync(records[:1], now, 2.0)] == [("b", "removed")]
    assert pool.sync(records[:1], now, 3.0) == []
    assert (pool.free_capacity(), pool.workers["b"].token_hash) == (2, "")
    assert pool.pick() == "a"
    # Forgotten (after the review put its task back): no trace of it or its task
    pool.forget("b")
    assert "b" not in pool.workers
    assert "t1" not in pool.task_worker
