"""An admin changes a worker's capacity or tier (PATCH /api/v1/workers/{id}, ``workmesh
worker set``) or removes it (DELETE, ``workmesh worker remove``), and the dispatcher follows
at its next review."""

from __future__ import annotations

import json
from typing import Any

import aio_pika

from tests.bots import EventTap
from tests.conftest import Harness, eventually
from tests.test_cli import cli


async def submit(harness: Harness, count: int) -> list[str]:
    ids = []
    for n in range(count):
        status, body = await harness.api("POST", "/api/v1/tasks", json={"kind": f"k{n}"})
        assert status in (201, 202), body
        ids.append(body["id"])
    return ids


async def statuses(harness: Harness, ids: list[str]) -> list[tuple[str, Any]]:
    found = []
    for task_id in ids:
        _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
        found.append((task["status"], task["worker_id"]))
    return found


async def test_more_capacity_lets_a_worker_take_more(harness: Harness) -> None:
    # Given a worker with room for one, holding one task while a second waits
    await harness.start()
    await harness.bot("w", capacity=1, mode="hold")
    await harness.wait_online("w")
    first, second = await submit(harness, 2)
    await harness.wait_task(first, "first assigned", worker_id="w")
    assert (await statuses(harness, [second]))[0] == ("queued", None)
    # When an admin gives it room for two
    status, view = await harness.api("PATCH", "/api/v1/workers/w", json={"capacity": 2})
    assert status == 200, view
    assert (view["id"], view["capacity"], view["tier"], view["load"]) == ("w", 2, "active", 1)
    # Then the waiting task goes to it at the dispatcher's next review
    await harness.wait_task(second, "second assigned", worker_id="w")


async def test_an_active_worker_made_a_reserve_stands_by(harness: Harness) -> None:
    await harness.start()
    async with EventTap(harness.amqp_url, ("worker.*", "task.assigned")) as tap:
        await harness.bot("a", capacity=2, mode="hold")
        await harness.bot("b", capacity=2, mode="hold")
        await harness.wait_online("a", "b")
        # When b is made a reserve
        status, view = await harness.api("PATCH", "/api/v1/workers/b", json={"tier": "reserve"})
        assert status == 200, view
        assert (view["tier"], view["engaged"]) == ("reserve", False)
        # Then it is announced standing by, and new tasks go to a alone while a has room
        await eventually(
            lambda: {e["worker_id"] for e in tap.of("worker.standby")} == {"b"},
            message="b stands by",
        )
        await eventually(
            lambda: has_series(harness, 'workmesh_worker_capacity{tier="reserve",worker_id="b"}'),
            message="b's capacity under its new tier",
        )
        assert 'tier="active",worker_id="b"' not in " ".join(await worker_series(harness, "b"))
        ids = await submit(harness, 2)
        for task_id in ids:
            await harness.wait_task(task_id, "assigned to a", worker_id="a")
        # And made active again, it takes the next one (it is the least loaded)
        status, view = await harness.api("PATCH", "/api/v1/workers/b", json={"tier": "active"})
        assert (status, view["tier"]) == (200, "active")
        await eventually(lambda: len(tap.of("worker.standby")) == 1, message="no second standby")
        (third,) = await submit(harness, 1)
        await harness.wait_task(third, "assigned to b", worker_id="b")


async def test_worker_changes_refuse_bad_input(harness: Harness) -> None:
    await harness.start()
    w_token = await harness.add_worker("w", capacity=2)
    producer = await harness.producer_token()
    cases: list[tuple[str | None, str, Any, int, str]] = [
        (None, "w", {"capacity": 3}, 401, "a valid token is required"),
        (producer, "w", {"capacity": 3}, 403, "role admin"),
        (w_token, "w", {"capacity": 3}, 403, "role admin"),
        ("admin", "nobody", {"capacity": 3}, 404, "unknown worker 'nobody'"),
        ("admin", "w", {}, 422, "the body does not match the schema"),
        ("admin", "w", {"capacity": 0}, 422, "the body does not match the schema"),
        ("admin", "w", {"tier": "boss"}, 422, "the body does not match the schema"),
        ("admin", "w", {"capacity": 3, "name": "x"}, 422, "the body does not match the schema"),
    ]
    misses = []
    for token, worker_id, body, expected, reason in cases:
        kwargs: dict[str, Any] = {"json": body}
        if token != "admin":
            kwargs["token"] = token
        status, reply = await harness.api("PATCH", f"/api/v1/workers/{worker_id}", **kwargs)
        if status != expected or reason not in str(reply.get("error")):
            misses.append(f"{token} {worker_id} {body}: {status} {reply}")
    status, reply = await harness.api(
        "PATCH",
        "/api/v1/workers/w",
        data=b"{capacity",
        headers={"Content-Type": "application/json"},
    )
    if status != 400 or "malformed JSON" not in reply["error"]:
        misses.append(f"malformed JSON: {status} {reply}")
    assert not misses, "\n".join(misses)
    # Nothing changed
    _, view = await harness.api("GET", "/api/v1/workers/w")
    assert (view["capacity"], view["tier"]) == (2, "active")
    # The schema says what was wrong with an empty change
    _, reply = await harness.api("PATCH", "/api/v1/workers/w", json={})
    assert "nothing to change" in json.dumps(reply["details"])


async def test_worker_set_from_the_command_line(harness: Harness) -> None:
    await harness.start()
    await harness.add_worker("w", capacity=2)
    code, out, err = await cli(
        harness, "worker", "set", "w", "--capacity", "5", "--tier", "reserve"
    )
    assert code == 0, err
    shown = json.loads(out)
    assert (shown["id"], shown["capacity"], shown["tier"]) == ("w", 5, "reserve")
    code, _, err = await cli(harness, "worker", "set", "w")
    assert (code, "nothing to change" in err) == (1, True), err
    code, _, err = await cli(harness, "worker", "set", "nobody", "--capacity", "2")
    assert (code, "unknown worker 'nobody'" in err) == (1, True), err
    code, _, err = await cli(harness, "worker", "set", "w", "--capacity", "0")
    assert (code, "must be at least 1" in err) == (2, True), err
    _, view = await harness.api("GET", "/api/v1/workers/w")
    assert (view["capacity"], view["tier"]) == (5, "reserve")


async def worker_series(harness: Harness, worker_id: str) -> list[str]:
    """The leader's per-worker metric lines that name ``worker_id``."""
    _, text = await harness.api("GET", "/metrics", token=None)
    return [
        line
        for line in str(text).splitlines()
        if line.startswith("workmesh_worker_") and f'worker_id="{worker_id}"' in line
    ]


async def no_series(harness: Harness, worker_id: str) -> bool:
    return not await worker_series(harness, worker_id)


async def has_series(harness: Harness, prefix: str) -> bool:
    _, text = await harness.api("GET", "/metrics", token=None)
    return any(line.startswith(prefix) for line in str(text).splitlines())


async def queue_exists(amqp_url: str, name: str) -> bool:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        try:
            await (await connection.channel()).declare_queue(name, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False
        return True


async def test_a_removed_worker_gives_its_tasks_back_and_may_come_back(harness: Harness) -> None:
    # Given a worker holding a task
    await harness.start()
    async with EventTap(harness.amqp_url, ("worker.*",)) as tap:
        await harness.bot("w", capacity=1, mode="hold")
        await harness.wait_online("w")
        w_token = next(bot.token for bot in harness.bots if bot.worker_id == "w")
        (task_id,) = await submit(harness, 1)
        await harness.wait_task(task_id, "on w", worker_id="w")
        await harness.bot("v", capacity=1, mode="hold")
        await harness.wait_online("v")
        # When an admin removes it
        status, body = await harness.api("DELETE", "/api/v1/workers/w")
        assert status == 204, body
        # Then its token is void at once, and the API no longer shows it
        status, _ = await harness.api("POST", "/api/v1/worker/heartbeat", token=w_token)
        assert status == 401
        assert (await harness.api("GET", "/api/v1/workers/w"))[0] == 404
        _, listing = await harness.api("GET", "/api/v1/workers")
        assert [w["id"] for w in listing["workers"]] == ["v"]
        # And at the next review its task goes back to the queue, on to v, it is announced
        # removed and its queue is deleted
        await harness.wait_task(task_id, "moved to v", worker_id="v")
        await eventually(
            lambda: {e["worker_id"] for e in tap.of("worker.removed")} == {"w"},
            message="worker.removed",
        )
        assert not await queue_exists(harness.amqp_url, "workmesh.worker.w")
        await eventually(lambda: no_series(harness, "w"), message="w's metrics gone")
        # Adding the same id again brings it back, with a new token and a new queue
        status, again = await harness.api("POST", "/api/v1/workers", json={"id": "w"})
        assert status == 201, again
        assert again["token"] != w_token
        assert (await harness.api("GET", "/api/v1/workers/w"))[1]["online"] is False
        await eventually(lambda: queue_exists(harness.amqp_url, "workmesh.worker.w"), message="q")


async def test_removing_refuses_bad_input(harness: Harness) -> None:
    await harness.start()
    w_token = await harness.add_worker("w")
    producer = await harness.producer_token()
    for token, worker_id, expected in [
        (None, "w", 401),
        (producer, "w", 403),
        (w_token, "w", 403),
        ("admin", "nobody", 404),
    ]:
        kwargs: dict[str, Any] = {} if token == "admin" else {"token": token}
        status, reply = await harness.api("DELETE", f"/api/v1/workers/{worker_id}", **kwargs)
        assert (status, bool(reply.get("error"))) == (expected, True), (token, reply)
    assert (await harness.api("GET", "/api/v1/workers/w"))[0] == 200  # still there
    code, _, err = await cli(harness, "worker", "remove", "w")
    assert code == 0, err
    assert "removed worker w" in err
    code, _, err = await cli(harness, "worker", "remove", "w")
    assert (code, "unknown worker 'w'" in err) == (1, True), err
    status, reply = await harness.api("DELETE", "/api/v1/workers/w")
    assert (status, reply["error"]) == (404, "unknown worker 'w'")
    for method, path, body in [
        ("PATCH", "/api/v1/workers/w", {"capacity": 2}),
        ("POST", "/api/v1/workers/w/token", None),
        ("PUT", "/api/v1/workers/w/notifications", {"email": "w@example.org"}),
    ]:
        status, reply = await harness.api(method, path, json=body)
        assert status == 404, (method, path, reply)


async def test_a_leader_change_before_the_review_still_gives_the_tasks_back(
    harness: Harness,
) -> None:
    # Given a task on w, and the mesh stopped before any review saw w removed
    mesh = await harness.start(reconcile_interval=1.0)
    await harness.bot("w", capacity=1, mode="hold")
    await harness.wait_online("w")
    (task_id,) = await submit(harness, 1)
    await harness.wait_task(task_id, "on w", worker_id="w")
    await mesh.stop()
    code, _, err = await cli(harness, "worker", "remove", "w")
    assert code == 0, err
    # When a new leader starts (it never knew w) and another worker has room
    harness.meshes.remove(mesh)
    await harness.start(reconcile_interval=1.0)
    await harness.bot("v", capacity=1, mode="hold")
    # Then the reconciliation puts the task back, and it goes to v
    await harness.wait_task(task_id, "moved to v", worker_id="v")
