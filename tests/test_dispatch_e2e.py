"""The dispatcher end to end: real RabbitMQ, a real database, bots in plain aio-pika."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from models import Task
from tests.bots import Producer
from tests.conftest import Harness, eventually
from workmesh.services import tasks as tasks_service


async def task_status(harness: Harness, task_id: str) -> str:
    status, body = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert status == 200, body
    return str(body["status"])


async def test_even_spread_over_active_workers(harness: Harness) -> None:
    # Given three active workers that hold what they get
    await harness.start()
    bots = [await harness.bot(f"bot-{i}", capacity=4, mode="hold") for i in range(3)]
    token = await harness.producer_token()
    await harness.wait_online(*(b.worker_id for b in bots))
    # When nine tasks arrive
    async with Producer(harness.amqp_url, token) as producer:
        ids = [await producer.submit() for _ in range(9)]
    # Then each worker holds three: least load never lets one get ahead by more than one
    await eventually(lambda: sum(b.load for b in bots) == 9, message="nine tasks held")
    assert [b.load for b in bots] == [3, 3, 3]

    async def all_started() -> bool:
        return all([await task_status(harness, t) == "in_progress" for t in ids])

    # Reports are applied within a few milliseconds (they may wait for a turn to share)
    await eventually(all_started, message="all in progress")
    # And when they finish, every task is done
    for bot in bots:
        await bot.finish_all()

    async def all_done() -> bool:
        return all([await task_status(harness, t) == "done" for t in ids])

    await eventually(all_done, message="all tasks done")
    _, stats = await harness.api("GET", "/api/v1/stats")
    assert stats["tasks"]["done"] == 9
    assert stats["workers"]["load"] == 0
    await asyncio.sleep(0)


async def test_reserves_only_when_actives_are_full_and_released_after(harness: Harness) -> None:
    # Given one active worker with room for two, and a reserve, under the step policy
    await harness.start(scaling_policy="step", reserve_idle=0.3)
    active = await harness.bot("active-1", capacity=2, mode="hold")
    reserve = await harness.bot("reserve-1", capacity=2, tier="reserve", mode="hold")
    await harness.wait_online("active-1", "reserve-1")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        # When two tasks come, the active worker takes both and the reserve stays idle
        for _ in range(2):
            await producer.submit()
        await eventually(lambda: active.load == 2, message="active worker full")
        await asyncio.sleep(0.5)  # several reviews: nothing waits, so no reserve is engaged
        assert reserve.received == []
        # When more come while the active worker is full, the reserve is brought in
        for _ in range(2):
            await producer.submit()
    await eventually(lambda: reserve.load == 2, message="reserve engaged and given the backlog")
    _, body = await harness.api("GET", "/api/v1/workers/reserve-1")
    assert body["engaged"] is True
    # And when the work is done and the reserve has been idle, it goes back to standby
    await reserve.finish_all()
    await active.finish_all()

    async def standby() -> bool:
        _, worker = await harness.api("GET", "/api/v1/workers/reserve-1")
        return worker["engaged"] is False

    await eventually(standby, message="reserve back to standby")


async def test_priority_order_holds_while_every_worker_is_full(harness: Harness) -> None:
    # Given the only worker is busy
    await harness.start()
    bot = await harness.bot("only", capacity=1, mode="hold")
    await harness.wait_online("only")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        blocker = await producer.submit(priority=0)
        await eventually(lambda: bot.load == 1, message="worker busy")
        # When tasks of mixed priority wait (submitted lowest first)
        order = [0, 3, 9, 1, 9, 5, 0, 7]
        ids = [await producer.submit(priority=p, payload={"n": i}) for i, p in enumerate(order)]
    await asyncio.sleep(0.3)
    # Then they wait in RabbitMQ, not in the dispatcher
    assert bot.task_ids() == [blocker]
    # And leave it highest priority first, first-in-first-out within a priority
    for _ in ids:
        await eventually(lambda: bot.load == 1, message="next task")
        await bot.finish_all()
    await eventually(lambda: len(bot.received) == len(ids) + 1, message="all delivered")
    got = [(r.priority, r.payload["n"]) for r in bot.received[1:]]
    expected = sorted(((p, i) for i, p in enumerate(order)), key=lambda x: (-x[0], x[1]))
    assert got == expected


async def test_silent_worker_tasks_go_to_another(harness: Harness) -> None:
    # Given two workers, one of which takes tasks and then goes silent
    await harness.start(heartbeat_timeout=0.8)
    silent = await harness.bot("silent", capacity=2, mode="silent")
    await harness.wait_online("silent")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        ids = {await producer.submit(priority=p) for p in (2, 7)}
    await eventually(lambda: len(silent.received) == 2, message="silent worker took both")
    silent.beating = False
    healthy = await harness.bot("healthy", capacity=2, mode="done")
    # When its heartbeats stop, then its tasks are handed to the healthy worker and finish
    await eventually(lambda: set(healthy.task_ids()) == ids, timeout=15, message="tasks reassigned")
    for task_id in ids:
        await harness.wait_task(task_id, "done", status="done")
    _, worker = await harness.api("GET", "/api/v1/workers/silent")
    assert worker["online"] is False
    assert worker["load"] == 0


async def test_a_rejected_task_goes_to_another_worker(harness: Harness) -> None:
    # Alone, the picky worker gets the task back at once, round after round, until the other
    # comes; enough rounds allowed for that (the limit has its own test, test_failures_e2e).
    await harness.start(max_rejections=100_000)
    picky = await harness.bot("picky", capacity=1, mode="reject")
    await harness.wait_online("picky")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit()
    await eventually(lambda: len(picky.received) >= 1, message="picky got it")
    willing = await harness.bot("willing", capacity=1, mode="done")
    await eventually(lambda: willing.task_ids() == [task_id], message="handed to the other")
    await harness.wait_task(task_id, "done", status="done")
    _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert task["attempt"] == 1  # a rejection is not a failed attempt


async def test_cancel_a_waiting_and_a_running_task(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=1, mode="hold")
    await harness.wait_online("b")
    status, running = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    assert status == 201
    await eventually(lambda: bot.load == 1, message="running")
    status, waiting = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    assert status == 201
    # Cancel the waiting one: it is never delivered
    status, body = await harness.api("POST", f"/api/v1/tasks/{waiting['id']}/cancel")
    assert (status, body["status"]) == (200, "cancelled")
    # Cancel the running one: the worker is told, and its room comes back
    status, body = await harness.api("POST", f"/api/v1/tasks/{running['id']}/cancel")
    assert (status, body["status"]) == (200, "cancelled")
    await eventually(lambda: bot.cancels == [running["id"]], message="cancel notice")
    status, third = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await eventually(
        lambda: bot.task_ids() == [running["id"], third["id"]],
        message="room freed for the next task; the cancelled one skipped",
    )
    # Cancelling twice is a clear conflict
    status, body = await harness.api("POST", f"/api/v1/tasks/{running['id']}/cancel")
    assert status == 409
    assert "cancelled" in body["error"]


async def test_a_worker_over_http_only(harness: Harness) -> None:
    # Given a worker that uses HTTP for heartbeats and status, and AMQP only to receive
    await harness.start()
    token = await harness.add_worker("http-bot", capacity=1)
    status, _ = await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    assert status == 204
    await harness.wait_online("http-bot")
    status, created = await harness.api("POST", "/api/v1/tasks", json={"kind": "k", "priority": 4})
    task_id = created["id"]
    await harness.wait_task(task_id, "assigned", status="assigned")
    # It sees its task, moves it to in_progress and then done
    status, mine = await harness.api("GET", "/api/v1/tasks?worker_id=http-bot", token=token)
    assert [t["id"] for t in mine["tasks"]] == [task_id]
    path = f"/api/v1/worker/tasks/{task_id}/status"
    status, body = await harness.api("POST", path, token=token, json={"status": "in_progress"})
    assert (status, body["status"]) == (200, "in_progress")
    status, body = await harness.api(
        "POST", path, token=token, json={"status": "done", "result": {"answer": 42}}
    )
    assert (status, body["status"], body["result"]) == (200, "done", {"answer": 42})
    # The same change again is harmless; a change the lifecycle forbids is a 409 with a reason
    status, _ = await harness.api("POST", path, token=token, json={"status": "done"})
    assert status == 200
    status, body = await harness.api("POST", path, token=token, json={"status": "in_progress"})
    assert status == 409
    assert "done" in body["error"]
    # And its room is free again for the next task
    status, nxt = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await harness.wait_task(nxt["id"], "next assigned", status="assigned")


async def test_http_worker_fails_and_rejects_and_load_is_reconciled(harness: Harness) -> None:
    # hw beats once: a long heartbeat timeout keeps it online for the whole test (its subject
    # is reconciliation, which waits out the 2 s report grace, not liveness).
    await harness.start(
        max_attempts=2, retry_delays=[0.2], reconcile_interval=0.3, heartbeat_timeout=60.0
    )
    token = await harness.add_worker("hw", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("hw")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    path = f"/api/v1/worker/tasks/{task['id']}/status"
    await harness.wait_task(task["id"], "assigned", status="assigned")
    # A failure over HTTP is retried after the backoff (attempt 2), back to the only worker
    status, body = await harness.api(
        "POST", path, token=token, json={"status": "failed", "error": "disk full"}
    )
    assert (status, body["status"], body["attempt"]) == (200, "retrying", 2)
    await harness.wait_task(task["id"], "retried", status="assigned", attempt=2)
    # A rejection over HTTP puts it back in the queue (and, with no one else, back to hw)
    status, body = await harness.api("POST", path, token=token, json={"status": "rejected"})
    assert (status, body["status"]) == (200, "queued")
    await harness.wait_task(task["id"], "assigned again", status="assigned")
    # A status a worker may not set is refused with the allowed ones named
    status, body = await harness.api("POST", path, token=token, json={"status": "queued"})
    assert status == 422
    # The database says the task is done behind the leader's back (an announcement lost):
    # the periodic reconciliation frees the slot, so the next task is assigned
    mesh = harness.meshes[0]
    async with mesh.sessions() as session, session.begin():
        from models import Task

        row = await session.get(Task, task["id"])
        assert row is not None
        row.status = "done"
    _, nxt = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await harness.wait_task(nxt["id"], "slot reconciled", status="assigned")


async def test_a_cancel_that_races_another_change_answers_409_and_can_be_sent_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = await harness.start()
    status, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "job", "payload": {}})
    assert status == 201, task
    cancel = tasks_service.cancel

    async def raced(session: AsyncSession, task_id: str) -> tuple[Task, str | None]:
        found = await cancel(session, task_id)
        # Another change of the task commits between the cancel's read and its commit.
        async with mesh.sessions() as other, other.begin():
            changed = await other.get(Task, task_id)
            assert changed is not None
            changed.error = "changed meanwhile"
        return found

    monkeypatch.setattr(tasks_service, "cancel", raced)
    status, body = await harness.api("POST", f"/api/v1/tasks/{task['id']}/cancel")
    assert status == 409, body
    assert "at the same moment" in body["error"]
    _, now = await harness.api("GET", f"/api/v1/tasks/{task['id']}")
    assert now["status"] != "cancelled"

    monkeypatch.undo()
    status, body = await harness.api("POST", f"/api/v1/tasks/{task['id']}/cancel")
    assert (status, body["status"]) == (200, "cancelled")
