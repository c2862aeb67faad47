"""Operators make, list and revoke tokens, and replace a worker's token; the old ones stop
working over HTTP at once and over AMQP once the dispatcher has reviewed its pool."""

from __future__ import annotations

import json
from typing import Any

from tests.bots import Producer, read_dead_letters
from tests.conftest import Harness, eventually
from tests.test_cli import cli


async def a_review_has_run(harness: Harness, probe: str) -> None:
    """Wait until the leader has reviewed its pool since now: a new worker's first heartbeat
    shows as online only through a review, which re-reads tokens in the same look."""
    await harness.bot(probe)
    await harness.wait_online(probe)


async def test_a_revoked_producer_token_stops_working_over_http_and_amqp(
    harness: Harness,
) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=4)
    await harness.wait_online("b")

    # An admin makes a producer token over HTTP; the listing never shows a token or hash
    status, made = await harness.api(
        "POST", "/api/v1/tokens", json={"name": "script", "role": "producer"}
    )
    assert status == 201, made
    token = made["token"]
    status, listing = await harness.api("GET", "/api/v1/tokens")
    assert status == 200
    assert [(t["name"], t["role"]) for t in listing["tokens"]] == [("script", "producer")]
    assert token not in json.dumps(listing)
    assert "hash" not in json.dumps(listing)
    status, _ = await harness.api("POST", "/api/v1/tasks", token=token, json={"kind": "k"})
    assert status == 201
    async with Producer(harness.amqp_url, token) as producer:
        accepted = await producer.submit()
    await eventually(lambda: accepted in bot.task_ids(), message="submitted before revocation")

    # When it is revoked
    status, _ = await harness.api("DELETE", "/api/v1/tokens/script")
    assert status == 204

    # Then HTTP refuses it at once, and AMQP after the next review
    status, reply = await harness.api("POST", "/api/v1/tasks", token=token, json={"kind": "k"})
    assert status == 401, reply
    await a_review_has_run(harness, "probe")
    async with Producer(harness.amqp_url, token) as producer:
        refused = await producer.submit()
    (dead,) = await read_dead_letters(harness.amqp_url, expect=1)
    assert dead[0]["x-workmesh-reason"].startswith("unauthorized")
    assert json.loads(dead[1])["id"] == refused
    assert refused not in bot.task_ids()

    # And revoking it again, or a token that never was, is a clear 404
    status, reply = await harness.api("DELETE", "/api/v1/tokens/script")
    assert (status, reply["error"]) == (404, "no token named 'script'")


async def test_token_routes_are_for_admins_and_check_their_input(harness: Harness) -> None:
    await harness.start()
    producer = await harness.producer_token()
    worker = await harness.add_worker("w")
    for token in (producer, worker):
        for method, path in (("GET", "/api/v1/tokens"), ("DELETE", "/api/v1/tokens/producer")):
            status, _ = await harness.api(method, path, token=token)
            assert status == 403, (method, path)
        status, _ = await harness.api("POST", "/api/v1/workers/w/token", token=token)
        assert status == 403
    status, reply = await harness.api("POST", "/api/v1/tokens", json={"name": "producer"})
    assert (status, reply["error"]) == (409, "a token named 'producer' exists already")
    status, reply = await harness.api(
        "POST", "/api/v1/tokens", json={"name": "x", "role": "worker"}
    )
    assert status == 422
    assert "worker tokens come with the worker" in reply["error"]
    status, reply = await harness.api("POST", "/api/v1/tokens", json={"name": "", "extra": 1})
    assert status == 422
    assert {d["field"] for d in reply["details"]} == {"name", "extra"}
    status, reply = await harness.api("POST", "/api/v1/workers/ghost/token")
    assert (status, reply["error"]) == (404, "unknown worker 'ghost'")


async def test_a_replaced_worker_token_voids_the_old_one(harness: Harness) -> None:
    await harness.start()
    bot = await harness.bot("b", capacity=1, mode="hold")
    await harness.wait_online("b")
    async with Producer(harness.amqp_url, await harness.producer_token()) as producer:
        task_id = await producer.submit()
    await eventually(lambda: bot.load == 1, message="held")
    old = bot.token

    # When the operator replaces the worker's token (the bot beats on with the new one)
    status, reply = await harness.api("POST", "/api/v1/workers/b/token")
    assert status == 200, reply
    bot.token = reply["token"]
    assert bot.token != old

    # Then the old token is refused over HTTP at once, the new one accepted
    status, _ = await harness.api("POST", "/api/v1/worker/heartbeat", token=old)
    assert status == 401
    status, _ = await harness.api("POST", "/api/v1/worker/heartbeat", token=bot.token)
    assert status == 204
    # And over AMQP after a review: a report with the old token is dead-lettered ...
    await a_review_has_run(harness, "probe")
    await bot.publish("task.done", {"task_id": task_id, "worker_id": "b"}, token=old)

    def the_report(letter: tuple[dict[str, Any], bytes]) -> bool:
        headers, body = letter
        reason = str(headers["x-workmesh-reason"])
        return json.loads(body) == {"task_id": task_id, "worker_id": "b"} and reason.startswith(
            "unauthorized"
        )

    # A heartbeat the bot sent with the old token just before the change is refused too
    # (heartbeats are judged in batches, up to 50 ms after they arrive): look past it.
    letters: list[tuple[dict[str, Any], bytes]] = []
    while len(letters) < 3 and not any(the_report(letter) for letter in letters):
        letters += await read_dead_letters(harness.amqp_url, expect=1)
    assert any(the_report(letter) for letter in letters), letters
    assert all(
        the_report(letter) or headers["x-workmesh-source"] == "worker.heartbeat"
        for letter in letters
        for headers in [letter[0]]
    ), letters
    _, task = await harness.api("GET", f"/api/v1/tasks/{task_id}")
    assert task["status"] != "done"
    # ... and the same report with the new one is applied
    await bot.finish(task_id)
    await harness.wait_task(task_id, "done with the new token", status="done")


async def test_cli_lists_revokes_and_replaces_tokens(harness: Harness) -> None:
    await harness.start()
    await harness.add_worker("w")
    code, out, err = await cli(harness, "token", "add", "nightly")
    assert code == 0, err
    nightly = out.strip()

    code, out, err = await cli(harness, "token", "list")
    assert code == 0, err
    assert "nightly" in out
    assert "producer" in out
    assert nightly not in out

    code, out, err = await cli(harness, "token", "revoke", "nightly")
    assert (code, err.strip()) == (0, "revoked 'nightly'")
    status, _ = await harness.api("GET", "/api/v1/stats", token=nightly)
    assert status == 401
    code, _, err = await cli(harness, "token", "revoke", "nightly")
    assert code != 0
    assert "no token named 'nightly'" in err

    code, out, err = await cli(harness, "worker", "token", "w")
    assert code == 0, err
    replaced = json.loads(out)
    assert replaced["id"] == "w"
    status, _ = await harness.api("POST", "/api/v1/worker/heartbeat", token=replaced["token"])
    assert status == 204
    code, _, err = await cli(harness, "worker", "token", "ghost")
    assert code != 0
    assert "unknown worker 'ghost'" in err
