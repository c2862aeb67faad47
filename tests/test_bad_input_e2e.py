"""Every bad input gets a clear error, and nothing else stops or is lost."""

from __future__ import annotations

import json
from typing import Any

import aio_pika

from tests.bots import Producer, read_dead_letters
from tests.conftest import Harness, eventually


async def test_bad_intake_messages_are_dead_lettered_with_a_reason(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=2, mode="done")
    await harness.wait_online("b")
    token = await harness.producer_token()
    bad = {
        b"{not json": "invalid task: body: Invalid JSON",
        b'{"payload": {}}': "invalid task: kind: Field required",
        b'{"kind": "k", "priority": 12}': (
            "invalid task: priority: Input should be less than or equal to 9"
        ),
        b'{"kind": "k", "surprise": 1}': "invalid task: surprise: Extra inputs are not permitted",
        b'{"kind": "k", "payload": [1, 2]}': "invalid task: payload: Input should be an object",
    }
    async with Producer(harness.amqp_url, token) as producer:
        for body in bad:
            await producer.submit_raw(body)
        good = await producer.submit()
    dead = await read_dead_letters(harness.amqp_url, expect=len(bad))
    by_body = {body: headers["x-workmesh-reason"] for headers, body in dead}
    for body, reason in bad.items():
        assert by_body[body].startswith(reason), (body, by_body[body])
        assert dict(dead[0][0])["x-workmesh-source"] == "workmesh.tasks.intake"
    # And the good task behind them is delivered
    await eventually(lambda: bot.task_ids() == [good], message="good task delivered")


async def test_bad_reports_are_dead_lettered_and_the_consumer_goes_on(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=1, mode="hold")
    await harness.wait_online("b")
    token = await harness.producer_token()
    async with Producer(harness.amqp_url, token) as producer:
        task_id = await producer.submit()
    await eventually(lambda: bot.load == 1, message="held")
    await bot.publish("task.done", {"task_id": task_id})  # no worker_id
    await bot.publish("task.done", {"task_id": "nope", "worker_id": "b"})
    await bot.publish("task.done", {"task_id": task_id, "worker_id": "ghost"})
    await bot.publish("worker.heartbeat", {"worker": "b"})  # wrong field name
    await bot._events.publish(  # not even JSON
        aio_pika.Message(b"\xff\x00", headers={"x-workmesh-token": bot.token}),
        routing_key="task.started",
    )
    dead = await read_dead_letters(harness.amqp_url, expect=5)
    reasons = sorted(h["x-workmesh-reason"] for h, _ in dead)
    assert any(r.startswith("invalid report: worker_id: Field required") for r in reasons)
    assert "unknown task 'nope'" in reasons
    assert "unknown worker 'ghost'" in reasons
    assert any(r.startswith("invalid message") and "worker_id" in r for r in reasons), reasons
    assert any(r.startswith("invalid report: body: Invalid JSON") for r in reasons), reasons
    # The real report still lands, and a report the lifecycle forbids afterwards is refused
    await bot.finish(task_id)
    await harness.wait_task(task_id, "done", status="done")
    await bot.report("started", task_id)
    dead = await read_dead_letters(harness.amqp_url, expect=1)
    assert dead[0][0]["x-workmesh-reason"] == "task is done; a worker cannot report started"


async def test_bad_http_requests_say_what_is_wrong(harness: Harness) -> None:
    await harness.start()
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/api/v1/tasks", {"data": "{oops"}, 400, "malformed JSON"),
        ("POST", "/api/v1/tasks", {"json": {"kind": ""}}, 422, "does not match the schema"),
        ("POST", "/api/v1/tasks", {"json": {"kind": "k", "priority": -1}}, 422, "schema"),
        ("GET", "/api/v1/tasks/does-not-exist", {}, 404, "no task 'does-not-exist'"),
        ("GET", "/api/v1/tasks?status=weird", {}, 400, "status must be one of"),
        ("GET", "/api/v1/tasks?limit=0", {}, 400, "limit must be at least 1"),
        ("POST", "/api/v1/workers", {"json": {"id": "Bad Id!"}}, 422, "schema"),
        ("POST", "/api/v1/workers", {"json": {"id": "ok", "capacity": 0}}, 422, "schema"),
        ("GET", "/api/v1/workers/ghost", {}, 404, "no worker 'ghost'"),
        ("POST", "/api/v1/tasks/ghost/cancel", {}, 404, "no task"),
        ("GET", "/api/v1/nowhere", {}, 404, "Not Found"),
    ]
    for method, path, kwargs, expected, words in cases:
        status, body = await harness.api(method, path, **kwargs)
        assert status == expected, (path, body)
        assert words in json.dumps(body), (path, body)
    status, body = await harness.api("POST", "/api/v1/workers", json={"id": "dup"})
    status, body = await harness.api("POST", "/api/v1/workers", json={"id": "dup"})
    assert (status, body["error"]) == (409, "worker 'dup' exists already")
    status, body = await harness.api(
        "GET", "/api/v1/stats", token=None, headers={"Authorization": "Basic abc"}
    )
    assert status == 401
    assert "Bearer" in body["error"]
