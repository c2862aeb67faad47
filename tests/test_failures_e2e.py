"""Retries with a RabbitMQ delay, dead letters with a reason, idempotent submission."""

from __future__ import annotations

import asyncio
import json

from tests.bots import EventTap, Producer, read_dead_letters
from tests.conftest import Harness, eventually


async def test_failures_retry_after_a_delay_then_go_dead(harness: Harness) -> None:
    # Given a worker that always fails, and three attempts with 0.3 s and 0.6 s of backoff
    await harness.start(max_attempts=3, retry_delays=[0.3, 0.6])
    bot = await harness.bot("flaky", capacity=1, mode="fail")
    await harness.wait_online("flaky")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit(priority=6)
    # Then it is tried three times, each after its backoff, with the attempt counted
    await eventually(lambda: len(bot.received) == 3, message="three attempts")
    attempts = [r.attempt for r in bot.received]
    assert attempts == [1, 2, 3]
    gaps = [b.at - a.at for a, b in zip(bot.received, bot.received[1:], strict=False)]
    assert gaps[0] >= 0.3
    assert gaps[1] >= 0.6
    assert all(r.priority == 6 for r in bot.received)  # the priority survives the delay
    # And after the last it is dead, with a dead letter that says why
    dead = await read_dead_letters(harness.amqp_url, expect=1)
    headers, body = dead[0]
    assert "attempts exhausted (3 of 3): boom" in headers["x-workmesh-reason"]
    assert json.loads(body)["id"] == task_id
    _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert (task["status"], task["attempt"], task["error"]) == ("dead", 3, "boom")


async def test_a_failure_then_success(harness: Harness) -> None:
    await harness.start(max_attempts=3, retry_delays=[0.2])
    bot = await harness.bot("once-flaky", capacity=1, mode="fail")
    await harness.wait_online("once-flaky")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit()
    await eventually(lambda: len(bot.received) == 1, message="first attempt")
    bot.mode = "done"
    await eventually(lambda: len(bot.received) == 2, message="second attempt")
    await harness.wait_task(task_id, "done on the second attempt", status="done", attempt=2)


async def test_the_same_idempotency_key_makes_one_task(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=5, mode="hold")
    await harness.wait_online("b")
    token = await harness.producer_token()
    # Over AMQP, twice with the same key (different ids), and over HTTP with it too
    async with Producer(harness.amqp_url, token) as producer:
        first = await producer.submit(idempotency_key="order-42")
        await producer.submit(idempotency_key="order-42")
    await eventually(lambda: len(bot.received) == 1, message="one delivery")
    status, body = await harness.api(
        "POST", "/api/v1/tasks", json={"kind": "noop", "idempotency_key": "order-42"}
    )
    assert (status, body["id"]) == (200, first)
    # Over HTTP, a new key twice: 201 then 200 with the same task
    s1, b1 = await harness.api("POST", "/api/v1/tasks", json={"kind": "x", "idempotency_key": "k2"})
    s2, b2 = await harness.api("POST", "/api/v1/tasks", json={"kind": "x", "idempotency_key": "k2"})
    assert (s1, s2, b1["id"]) == (201, 200, b2["id"])
    await eventually(lambda: len(bot.received) == 2, message="second task delivered")
    _, listing = await harness.api("GET", "/api/v1/tasks")
    assert len(listing["tasks"]) == 2
    # A redelivered message without id or key but with an AMQP message_id makes one task too
    async with Producer(harness.amqp_url, token) as producer:
        for _ in range(2):
            await producer.submit_raw(b'{"kind": "noop"}', message_id="msg-7")
    await eventually(lambda: len(bot.received) == 3, message="third task delivered")
    _, listing = await harness.api("GET", "/api/v1/tasks")
    assert len(listing["tasks"]) == 3


async def test_http_submissions_sent_at_once_with_one_key_make_one_task(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=5, mode="hold")
    await harness.wait_online("b")
    answers = await asyncio.gather(
        *(
            harness.api("POST", "/api/v1/tasks", json={"kind": "x", "idempotency_key": "once"})
            for _ in range(6)
        ),
        *(harness.api("POST", "/api/v1/tasks", json={"kind": "y"}) for _ in range(3)),
    )
    keyed, plain = answers[:6], answers[6:]
    assert sorted(status for status, _ in keyed) == [200] * 5 + [201]
    assert len({body["id"] for _, body in keyed}) == 1
    assert [status for status, _ in plain] == [201] * 3
    await eventually(lambda: len(bot.received) == 4, message="four tasks delivered")
    await asyncio.sleep(0.5)  # and no fifth
    assert len(bot.received) == 4
    _, listing = await harness.api("GET", "/api/v1/tasks")
    assert len(listing["tasks"]) == 4


async def test_a_task_every_worker_rejects_is_dead_at_the_limit(harness: Harness) -> None:
    # Given two workers that reject everything, and at most three rejections per task
    await harness.start(max_rejections=3)
    bots = [await harness.bot(f"picky-{n}", capacity=1, mode="reject") for n in range(2)]
    await harness.wait_online("picky-0", "picky-1")
    async with EventTap(harness.amqp_url, ("task.dead",)) as tap:
        async with Producer(harness.amqp_url, await harness.producer_token()) as producer:
            task_id = await producer.submit(priority=4)
        # Then it goes round three times (taking turns between the two), and no more
        dead = await read_dead_letters(harness.amqp_url, expect=1)
        await eventually(lambda: len(tap.of("task.dead")) == 1, message="task.dead")
    received = [r for bot in bots for r in bot.received]
    assert len(received) == 3
    assert all(r.attempt == 1 for r in received)  # a rejection is not a failed attempt
    _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert (task["status"], task["rejections"], task["worker_id"]) == ("dead", 3, None)
    assert task["error"].startswith(
        "rejections: 3, the most allowed (WORKMESH_DISPATCH_MAX_REJECTIONS); the last by picky-"
    )
    headers, body = dead[0]
    assert headers["x-workmesh-reason"] == task["error"]
    assert json.loads(body)["id"] == task_id
    assert tap.of("task.dead") == [{"task_id": task_id, "error": task["error"]}]


async def test_the_last_rejection_over_http_is_dead_lettered_too(harness: Harness) -> None:
    # A worker that rejects over HTTP, where one rejection is all a task may have
    await harness.start(max_rejections=1)
    token = await harness.add_worker("person")
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("person")
    status, created = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    assert status == 201, created
    await harness.wait_task(created["id"], "assigned", worker_id="person")
    status, task = await harness.api(
        "POST",
        f"/api/v1/worker/tasks/{created['id']}/status",
        token=token,
        json={"status": "rejected"},
    )
    assert (status, task["status"], task["rejections"]) == (200, "dead", 1), task
    # The leader hears of it like an AMQP report and publishes the dead letter
    dead = await read_dead_letters(harness.amqp_url, expect=1)
    assert dead[0][0]["x-workmesh-reason"] == (
        "rejections: 1, the most allowed (WORKMESH_DISPATCH_MAX_REJECTIONS); the last by person"
    )
