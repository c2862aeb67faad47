"""The operator overview, ``GET /api/v1/ops/overview``, against the real mesh."""

from __future__ import annotations

import json
from typing import Any

import aio_pika
import pytest

from rabbitmq.topology import DEAD_EXCHANGE, DEAD_QUEUE, REASON_HEADER
from tests.conftest import Harness, eventually

pytestmark = pytest.mark.e2e

OVERVIEW = "/api/v1/ops/overview"


async def submit(harness: Harness, priority: int, kind: str = "job") -> str:
    status, body = await harness.api(
        "POST", "/api/v1/tasks", json={"kind": kind, "priority": priority}
    )
    assert status == 201, body
    return str(body["id"])


async def overview(harness: Harness) -> dict[str, Any]:
    status, body = await harness.api("GET", OVERVIEW)
    assert status == 200, body
    return dict(body)


async def test_only_an_admin_may_read_the_overview(harness: Harness) -> None:
    await harness.start("api")
    worker = await harness.add_worker("clerk")
    producer = await harness.producer_token()
    status, body = await harness.api("GET", OVERVIEW, token=None)
    assert (status, body["error"]) == (
        401,
        "a valid token is required: 'Authorization: Bearer <token>'",
    )
    status, body = await harness.api("GET", OVERVIEW, token="wm_not-a-token")
    assert (status, body["error"]) == (401, "unknown token")
    status, body = await harness.api("GET", OVERVIEW, token=worker)
    assert (status, body["error"]) == (403, "this needs a token of role admin; yours is worker")
    status, body = await harness.api("GET", OVERVIEW, token=producer)
    assert status == 403
    assert "yours is producer" in body["error"]
    status, _ = await harness.api("GET", OVERVIEW)
    assert status == 200


async def test_the_overview_counts_waiting_finished_and_dead_tasks(harness: Harness) -> None:
    await harness.start(max_attempts=1)
    await harness.add_worker("clerk", capacity=2)  # registered, never online
    empty = await overview(harness)
    assert empty["tasks"] == dict.fromkeys(
        ["queued", "assigned", "in_progress", "retrying", "done", "dead", "cancelled"], 0
    )
    assert list(empty["queue"]["queued_by_priority"]) == [str(p) for p in range(9, -1, -1)]
    assert empty["dead_letters"]["recent"] == []

    # Nobody online: the tasks wait, stored as queued and as messages in the intake queue.
    ids = [await submit(harness, 7), await submit(harness, 7), await submit(harness, 2)]

    async def all_waiting() -> bool:
        return bool((await overview(harness))["queue"]["intake_messages"] == 3)

    await eventually(all_waiting, message="three messages in the intake queue")
    waiting = await overview(harness)
    assert waiting["queue"]["queued_by_priority"] == {
        **{str(p): 0 for p in range(10)},
        "7": 2,
        "2": 1,
    }
    assert waiting["tasks"]["queued"] == 3
    [clerk] = waiting["workers"]
    assert clerk == {
        "id": "clerk",
        "tier": "active",
        "capacity": 2,
        "online": False,
        "engaged": False,
        "last_heartbeat_at": None,
        "load": 0,
    }

    doer_bot = await harness.bot("doer", capacity=3)
    for task_id in ids:
        await harness.wait_task(task_id, "done by the bot", status="done")
    done = await overview(harness)
    assert done["tasks"]["done"] == 3
    assert done["tasks"]["queued"] == 0
    assert done["queue"]["queued_by_priority"] == {str(p): 0 for p in range(10)}
    assert done["throughput"] == {
        "last_minute": {"done": 3, "dead": 0},
        "last_5_minutes": {"done": 3, "dead": 0},
    }
    doer = next(w for w in done["workers"] if w["id"] == "doer")
    assert doer["online"] is True
    assert doer["capacity"] == 3
    assert doer["last_heartbeat_at"] is not None

    # A task that fails on its only attempt is dead, and its dead letter shows with the reason.
    doer_bot.mode = "fail"
    doomed = await submit(harness, 5, kind="doomed")
    await harness.wait_task(doomed, "dead after its one attempt", status="dead")

    async def letter_shown() -> bool:
        recent = (await overview(harness))["dead_letters"]["recent"]
        return any(letter["task_id"] == doomed for letter in recent)

    await eventually(letter_shown, message="the dead task's letter in the overview")
    final = await overview(harness)
    [letter] = [x for x in final["dead_letters"]["recent"] if x["task_id"] == doomed]
    assert letter["reason"] == "attempts exhausted (1 of 1): boom"
    assert letter["source"] == "workmesh.dispatcher.reports"
    assert json.loads(letter["body"])["id"] == doomed
    assert final["tasks"]["dead"] == 1
    assert final["throughput"]["last_minute"] == {"done": 3, "dead": 1}


async def test_dead_letters_are_copied_not_taken_from_the_operators_queue(
    harness: Harness,
) -> None:
    await harness.start("api")
    connection = await aio_pika.connect(harness.amqp_url)
    async with connection:
        channel = await connection.channel()
        dead = await channel.get_exchange(DEAD_EXCHANGE)
        for n in range(52):
            await dead.publish(
                aio_pika.Message(
                    json.dumps({"n": n}).encode(),
                    headers={REASON_HEADER: f"reason {n}", "x-workmesh-token": "secret"},
                ),
                routing_key="",
            )

        async def last_shown() -> bool:
            recent = (await overview(harness))["dead_letters"]["recent"]
            return bool(recent and recent[0]["reason"] == "reason 51")

        await eventually(last_shown, message="the last dead letter in the overview")
        letters = (await overview(harness))["dead_letters"]
        assert letters["keep"] == 50
        # The newest 50, newest first.
        assert [x["reason"] for x in letters["recent"]] == [f"reason {n}" for n in range(51, 1, -1)]
        assert letters["recent"][0]["body"] == '{"n": 51}'
        assert all("secret" not in json.dumps(x) for x in letters["recent"])
        # The operators' durable queue still holds every one of them.
        queue = await channel.declare_queue(DEAD_QUEUE, passive=True)
        assert queue.declaration_result.message_count == 52
