"""Who may do what, over HTTP and over AMQP; tokens are stored only as hashes."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models import ApiToken, Worker
from tests.bots import Producer, read_dead_letters
from tests.conftest import ADMIN_TOKEN, Harness, eventually


@pytest.fixture
async def cast(harness: Harness) -> dict[str, str]:
    """A running mesh and one token of each kind, plus two workers' tokens."""
    await harness.start()
    return {
        "admin": ADMIN_TOKEN,
        "producer": await harness.producer_token(),
        "w1": await harness.add_worker("w1"),
        "w2": await harness.add_worker("w2"),
        "bogus": "wm_not-a-real-token",
    }


# who, method, path, body, expected status
HTTP_MATRIX: list[tuple[str | None, str, str, object, int]] = [
    (None, "POST", "/api/v1/tasks", {"kind": "k"}, 401),
    ("bogus", "POST", "/api/v1/tasks", {"kind": "k"}, 401),
    ("w1", "POST", "/api/v1/tasks", {"kind": "k"}, 403),
    ("producer", "POST", "/api/v1/tasks", {"kind": "k"}, 201),
    ("admin", "POST", "/api/v1/tasks", {"kind": "k"}, 201),
    (None, "POST", "/api/v1/workers", {"id": "w9"}, 401),
    ("producer", "POST", "/api/v1/workers", {"id": "w9"}, 403),
    ("w1", "POST", "/api/v1/workers", {"id": "w9"}, 403),
    ("admin", "POST", "/api/v1/workers", {"id": "w9"}, 201),
    (None, "PATCH", "/api/v1/workers/w1", {"capacity": 2}, 401),
    ("producer", "PATCH", "/api/v1/workers/w1", {"capacity": 2}, 403),
    ("w1", "PATCH", "/api/v1/workers/w1", {"capacity": 2}, 403),
    ("admin", "PATCH", "/api/v1/workers/w1", {"capacity": 2}, 200),
    (None, "DELETE", "/api/v1/workers/w9", None, 401),
    ("producer", "DELETE", "/api/v1/workers/w9", None, 403),
    ("w1", "DELETE", "/api/v1/workers/w9", None, 403),
    ("admin", "DELETE", "/api/v1/workers/w9", None, 204),
    (None, "GET", "/api/v1/workers", None, 401),
    ("w1", "GET", "/api/v1/workers", None, 200),
    ("producer", "GET", "/api/v1/stats", None, 200),
    (None, "GET", "/api/v1/stats", None, 401),
    ("producer", "POST", "/api/v1/worker/heartbeat", None, 403),
    ("w1", "POST", "/api/v1/worker/heartbeat", None, 204),
    ("w1", "GET", "/api/v1/tasks?worker_id=w2", None, 403),
    ("w1", "GET", "/api/v1/tasks", None, 200),
    (None, "GET", "/healthz", None, 200),
    (None, "GET", "/metrics", None, 200),
]


async def test_http_matrix(harness: Harness, cast: dict[str, str]) -> None:
    # One mesh for the whole table; every row is checked and all misses reported together.
    misses = []
    for who, method, path, body, expected in HTTP_MATRIX:
        token = cast[who] if who else None
        status, reply = await harness.api(method, path, token=token, json=body)
        if status != expected or (status >= 400 and not reply.get("error")):
            misses.append(f"{who} {method} {path}: {status} {reply}, expected {expected}")
    assert not misses, "\n".join(misses)


async def test_a_worker_sees_and_changes_only_its_own_tasks(
    harness: Harness, cast: dict[str, str]
) -> None:
    await harness.api("POST", "/api/v1/worker/heartbeat", token=cast["w1"])
    await harness.wait_online("w1")
    _, task = await harness.api("POST", "/api/v1/tasks", json={"kind": "k"})
    await harness.wait_task(task["id"], "assigned to w1", worker_id="w1")
    status, _ = await harness.api("GET", f"/api/v1/tasks/{task['id']}", token=cast["w1"])
    assert status == 200
    status, reply = await harness.api("GET", f"/api/v1/tasks/{task['id']}", token=cast["w2"])
    assert status == 403
    assert "not assigned to worker 'w2'" in reply["error"]
    path = f"/api/v1/worker/tasks/{task['id']}/status"
    status, _ = await harness.api("POST", path, token=cast["w2"], json={"status": "done"})
    assert status == 403
    status, _ = await harness.api("POST", path, token=cast["producer"], json={"status": "done"})
    assert status == 403
    _, listing = await harness.api("GET", "/api/v1/tasks", token=cast["w2"])
    assert listing["tasks"] == []


async def test_amqp_submissions_and_reports_need_the_right_token(
    harness: Harness, cast: dict[str, str]
) -> None:
    bot = await harness.bot("honest", capacity=1, mode="hold")
    await harness.wait_online("honest")
    # Submitting without a token, with a worker's token, or with a bogus one is refused
    for token in (None, cast["w1"], cast["bogus"]):
        async with Producer(harness.amqp_url, token) as producer:
            await producer.submit(kind="sneaky")
    dead = await read_dead_letters(harness.amqp_url, expect=3)
    assert len(dead) == 3
    for headers, _ in dead:
        assert headers["x-workmesh-reason"].startswith("unauthorized")
        assert "x-workmesh-token" not in headers  # a dead letter never carries the secret
    # A legitimate task goes to the honest bot
    async with Producer(harness.amqp_url, cast["producer"]) as producer:
        task_id = await producer.submit()
    await eventually(lambda: bot.task_ids() == [task_id], message="delivered")
    # Another worker (w1's token, claiming to be 'honest') cannot report on it
    await bot.publish("task.done", {"task_id": task_id, "worker_id": "honest"}, token=cast["w1"])
    # Nor can w1 as itself, since the task is not its own
    await bot.publish("task.done", {"task_id": task_id, "worker_id": "w1"}, token=cast["w1"])
    # Nor may anyone keep a worker alive with the wrong token
    await bot.publish("worker.heartbeat", {"worker_id": "w2"}, token=cast["w1"])
    dead = await read_dead_letters(harness.amqp_url, expect=3)
    reasons = sorted(h["x-workmesh-reason"] for h, _ in dead)
    assert "unauthorized" in reasons[0] or "unauthorized" in reasons[1]
    assert any("not assigned to worker 'w1'" in r for r in reasons)
    assert any("heartbeat without worker 'w2'" in r for r in reasons)
    _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert task["status"] == "in_progress"
    _, w2 = await harness.api("GET", "/api/v1/workers/w2")
    assert w2["last_heartbeat_at"] is None


async def test_tokens_are_stored_hashed(harness: Harness, cast: dict[str, str]) -> None:
    mesh = harness.meshes[0]
    async with mesh.sessions() as session:
        stored = [t.token_hash for t in (await session.scalars(select(ApiToken))).all()]
        stored += [w.token_hash for w in (await session.scalars(select(Worker))).all()]
    assert len(stored) == 3
    for token in (cast["producer"], cast["w1"], cast["w2"]):
        assert token not in stored
        assert all(token not in h for h in stored)
