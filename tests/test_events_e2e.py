"""The mesh's own events on workmesh.events, and the threshold scaling policy."""

from __future__ import annotations

from tests.bots import EventTap, Producer
from tests.conftest import Harness, eventually


async def test_threshold_policy_engages_reserves_and_announces_it(harness: Harness) -> None:
    # Given one busy active worker, two reserves, and thresholds "3 waiting → 1, 6 → 2"
    await harness.start(
        scaling_policy="threshold",
        scaling_thresholds="3:1,6:2",
        scaling_window=0.5,
        reserve_idle=0.3,
    )
    async with EventTap(harness.amqp_url, ("task.*", "worker.*", "pool.scale")) as tap:
        active = await harness.bot("a", capacity=1, mode="hold")
        reserves = [
            await harness.bot(f"r{i}", capacity=1, tier="reserve", mode="hold") for i in range(2)
        ]
        await harness.wait_online("a", "r0", "r1")
        token = await harness.producer_token()
        async with Producer(harness.amqp_url, token) as producer:
            await producer.submit()
            await eventually(lambda: active.load == 1, message="active busy")
            # When four wait, one reserve is engaged; when seven wait, both are
            for _ in range(4):
                await producer.submit()
            await eventually(lambda: sum(r.load for r in reserves) == 1, message="one reserve")
            await eventually(
                lambda: any(e["desired_reserve"] == 1 for e in tap.of("pool.scale")),
                message="pool.scale 1",
            )
            for _ in range(3):
                await producer.submit()
            await eventually(lambda: sum(r.load for r in reserves) == 2, message="two reserves")
        # Then the events tell the story: workers online, reserves activated, tasks assigned.
        # Events are sent without waiting, so the last may still be on its way to the tap.
        await eventually(lambda: len(tap.of("task.assigned")) == 3, message="three assigned")
        assert {e["worker_id"] for e in tap.of("worker.online")} == {"a", "r0", "r1"}
        assert {e["worker_id"] for e in tap.of("worker.activated")} == {"r0", "r1"}
        # In order: a worker is announced online, and a reserve activated, before any task
        # is assigned to it.
        for worker_id in ("a", "r0", "r1"):
            about = [key for key, body in tap.events if body.get("worker_id") == worker_id]
            first_task = about.index("task.assigned")
            assert "worker.online" in about[:first_task], about
            if worker_id != "a":
                assert "worker.activated" in about[:first_task], about
        # (pool.scale goes out at the end of the review that engaged the reserve, so it may
        # come after the reserve's task.)
        await eventually(
            lambda: any(e["desired_reserve"] == 2 for e in tap.of("pool.scale")),
            message="pool.scale 2",
        )
        wanted = [e["desired_reserve"] for e in tap.of("pool.scale")]
        assert wanted.index(1) < wanted.index(2), wanted  # one reserve, then both
        assert all(e["policy"] == "threshold" for e in tap.of("pool.scale"))
        assigned = tap.of("task.assigned")
        assert len(assigned) == 3
        assert {e["worker_id"] for e in assigned} == {"a", "r0", "r1"}
        # And when the queue drains and the reserves idle, they stand by again
        for bot in (active, *reserves):
            bot.mode = "done"
            await bot.finish_all()
        await eventually(
            lambda: len(tap.of("worker.standby")) == 2, timeout=15, message="reserves stand by"
        )
        # A worker that goes silent is announced offline
        reserves[0].beating = False
        await eventually(
            lambda: {e["worker_id"] for e in tap.of("worker.offline")} == {"r0"},
            timeout=15,
            message="offline event",
        )
