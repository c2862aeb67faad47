"""Notifications for workers with no live channel: signed webhooks, email, and the rule that a
live channel (here a WebSocket) means no notification."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.bots import read_dead_letters
from tests.conftest import Harness, eventually, free_port
from tests.test_channels_e2e import WsWorker, poll, set_status, submit
from workmesh.channels import notify

pytestmark = pytest.mark.e2e


@dataclass
class Receiver:
    """A worker's webhook endpoint that verifies the signature as the docs tell receivers to."""

    status: int = 200
    secret: str = ""
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        return web.Response(status=self.status)

    def verified(self) -> list[dict[str, Any]]:
        bodies = []
        for headers, raw in self.calls:
            expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Workmesh-Signature"], expected)
            bodies.append(json.loads(raw))
        return bodies


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver(port=free_port())
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    yield hook
    await runner.cleanup()


async def notify_by_webhook(harness: Harness, worker_id: str, token: str, hook: Receiver) -> None:
    status, body = await harness.api(
        "PUT",
        f"/api/v1/workers/{worker_id}/notifications",
        token=token,
        json={"webhook_url": hook.url},
    )
    assert status == 200, body
    hook.secret = body["webhook_secret"]
    await dispatcher_reviewed()


async def dispatcher_reviewed() -> None:
    """The dispatcher learns who wants notices at its reviews (every 0.1 s in these tests)."""
    await asyncio.sleep(0.4)


async def test_a_worker_with_no_live_channel_gets_a_signed_webhook(
    harness: Harness, receiver: Receiver
) -> None:
    await harness.start()
    token = await harness.add_worker("person")
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("person")
    await notify_by_webhook(harness, "person", token, receiver)
    task_id = await submit(harness, kind="review", payload={"doc": 7})
    await eventually(lambda: len(receiver.calls) == 1, message="the webhook")
    [notice] = receiver.verified()
    assert notice["event"] == "task.assigned"
    assert notice["task"]["task_id"] == task_id
    assert notice["task"]["payload"] == {"doc": 7}
    assert notice["fetch"].endswith("/api/v1/worker/tasks")
    # The person then fetches it over HTTP.
    [assignment] = (await poll(harness, token))["assignments"]
    assert assignment["task_id"] == task_id
    # A body changed on the way does not match the signature.
    headers, raw = receiver.calls[0]
    forged = raw.replace(b'"doc":7', b'"doc":8')
    good = "sha256=" + hmac.new(receiver.secret.encode(), forged, hashlib.sha256).hexdigest()
    assert good != headers["X-Workmesh-Signature"]


async def test_a_live_websocket_means_no_notification(harness: Harness, receiver: Receiver) -> None:
    await harness.start()
    live = await harness.add_worker("live")
    await notify_by_webhook(harness, "live", live, receiver)
    ws = await WsWorker(harness, live).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("live")
    first = await submit(harness)
    await eventually(lambda: len(ws.of("assignment")) == 1, message="pushed over the socket")
    assert ws.of("assignment")[0]["task_id"] == first
    # "live" is full now; the next task goes to "idle", which has no live channel. The notifier
    # takes events one at a time, in order: once idle's webhook is in, the first was decided.
    idle = await harness.add_worker("idle")
    await notify_by_webhook(harness, "idle", idle, receiver)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=idle)
    await harness.wait_online("idle")
    second = await submit(harness)
    await eventually(lambda: len(receiver.calls) >= 1, message="the idle worker's webhook")
    await asyncio.sleep(0.2)
    notified = [(n["worker_id"], n["task"]["task_id"]) for n in receiver.verified()]
    assert notified == [("idle", second)]
    await ws.close()


async def test_a_worker_whose_socket_closed_is_notified_again(
    harness: Harness, receiver: Receiver
) -> None:
    # The notifier asks RabbitMQ afresh for each assignment whether the worker is live
    await harness.start()
    token = await harness.add_worker("hybrid")
    await notify_by_webhook(harness, "hybrid", token, receiver)
    ws = await WsWorker(harness, token).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("hybrid")
    first = await submit(harness)
    await eventually(lambda: len(ws.of("assignment")) == 1, message="pushed over the socket")
    await ws.send({"type": "status", "task_id": first, "status": "done"})
    await harness.wait_task(first, "done over the socket", status="done")
    await ws.close()

    # When the socket is gone (the worker stays online by HTTP heartbeats)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    second = await submit(harness)

    # Then its next assignment is notified by webhook; the first never was
    await eventually(lambda: len(receiver.calls) >= 1, message="webhook after the socket closed")
    notified = [(n["worker_id"], n["task"]["task_id"]) for n in receiver.verified()]
    assert notified == [("hybrid", second)]


async def test_a_webhook_set_later_is_used_from_the_next_review(
    harness: Harness, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The dispatcher reads who wants notices at each review; the notifier remembers it too,
    # and a change through the API must not wait for that memory to expire (here it never
    # would).
    monkeypatch.setattr(notify, "NOTICES_TTL", 3600.0)
    await harness.start()
    late = await harness.add_worker("late")
    await harness.api("POST", "/api/v1/worker/heartbeat", token=late)
    await harness.wait_online("late")
    first = await submit(harness)
    await harness.wait_task(first, "assigned to late", worker_id="late")
    # "late" is full; the next task goes to "witness", whose webhook, once called, shows that
    # the notifier has decided the first one (it takes events in order): late wanted none.
    witness = await harness.add_worker("witness")
    await notify_by_webhook(harness, "witness", witness, receiver)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=witness)
    await harness.wait_online("witness")
    second = await submit(harness)
    await eventually(lambda: len(receiver.calls) == 1, message="the witness's webhook")

    # When late sets a webhook (same secret for both, to check every signature) and has room
    status, body = await harness.api(
        "PUT",
        "/api/v1/workers/late/notifications",
        token=late,
        json={"webhook_url": receiver.url},
    )
    assert status == 200, body
    receiver.secret = body["webhook_secret"]
    receiver.calls.clear()
    await dispatcher_reviewed()
    [assignment] = (await poll(harness, late))["assignments"]
    assert await set_status(harness, late, assignment["task_id"], "done") == 200
    third = await submit(harness)

    # Then its next assignment is notified
    await eventually(lambda: len(receiver.calls) == 1, message="late's webhook")
    notified = [(n["worker_id"], n["task"]["task_id"]) for n in receiver.verified()]
    assert notified == [("late", third)]
    assert second != third


async def test_a_webhook_that_keeps_failing_is_dead_lettered_with_the_reason(
    harness: Harness, receiver: Receiver
) -> None:
    receiver.status = 500
    await harness.start(channels={"webhook_tries": 3, "webhook_backoff": 0.01})
    token = await harness.add_worker("unlucky")
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("unlucky")
    await notify_by_webhook(harness, "unlucky", token, receiver)
    task_id = await submit(harness)
    [(headers, body)] = await read_dead_letters(harness.amqp_url, expect=1)
    assert len(receiver.calls) == 3
    assert headers["x-workmesh-source"] == "workmesh.notify"
    assert (
        f"webhook to {receiver.url} failed after 3 tries: HTTP 500"
        in (headers["x-workmesh-reason"])
    )
    assert json.loads(body)["task_id"] == task_id
    # The task itself is untouched: still the worker's, to fetch over HTTP.
    [assignment] = (await poll(harness, token))["assignments"]
    assert assignment["task_id"] == task_id


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


async def test_a_worker_with_an_email_address_gets_an_email(harness: Harness) -> None:
    inbox = Mailbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        await harness.start(
            channels={"smtp_host": "127.0.0.1", "smtp_port": smtp.port, "public_url": "http://x"}
        )
        token = await harness.add_worker("clerk")
        status, body = await harness.api(
            "PUT",
            "/api/v1/workers/clerk/notifications",
            token=token,
            json={"email": "clerk@example.org"},
        )
        assert status == 200, body
        assert body["webhook_secret"] is None
        await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
        await harness.wait_online("clerk")
        task_id = await submit(harness, kind="translate", priority=4)
        await eventually(lambda: len(inbox.messages) == 1, message="the email")
        [mail] = inbox.messages
        assert mail["To"] == "clerk@example.org"
        assert "translate" in mail["Subject"]
        text = mail.get_payload(decode=True).decode()
        assert task_id in text
        assert "http://x/app/" in text
    finally:
        smtp.stop()


async def test_notification_settings_are_the_workers_own(harness: Harness) -> None:
    await harness.start()
    mine = await harness.add_worker("mine")
    await harness.add_worker("theirs")
    path = "/api/v1/workers/{}/notifications"
    status, body = await harness.api(
        "PUT", path.format("mine"), token=mine, json={"webhook_url": "https://hooks.example/x"}
    )
    assert status == 200
    first_secret = body["webhook_secret"]
    assert first_secret
    # The secret is shown once; setting the URL again keeps it unless a new one is asked for.
    status, body = await harness.api(
        "PUT", path.format("mine"), token=mine, json={"webhook_url": "https://hooks.example/y"}
    )
    assert (status, body["webhook_secret"]) == (200, None)
    status, body = await harness.api(
        "PUT",
        path.format("mine"),
        token=mine,
        json={"webhook_url": "https://hooks.example/y", "new_secret": True},
    )
    assert body["webhook_secret"] not in (None, first_secret)
    status, body = await harness.api("PUT", path.format("theirs"), token=mine, json={})
    assert status == 403
    status, body = await harness.api("PUT", path.format("mine"), json={"webhook_url": "nope"})
    assert status == 422
    assert body["details"][0]["field"] == "webhook_url"
    status, body = await harness.api("PUT", path.format("mine"), json={"email": "no-at-sign"})
    assert status == 422
    status, body = await harness.api("PUT", path.format("ghost"), json={})
    assert status == 404


async def test_only_the_assignments_of_workers_that_want_notices_reach_the_notifier(
    harness: Harness, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[str] = []
    on_assigned = notify.Notifier.on_assigned

    async def spy(self: notify.Notifier, task_id: str, worker_id: str) -> None:
        handled.append(worker_id)
        await on_assigned(self, task_id, worker_id)

    monkeypatch.setattr(notify.Notifier, "on_assigned", spy)
    await harness.start()
    bot = await harness.add_worker("bot", capacity=3)
    person = await harness.add_worker("person")
    await notify_by_webhook(harness, "person", person, receiver)
    for token in (bot, person):
        await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("bot")
    await harness.wait_online("person")
    tasks = [await submit(harness) for _ in range(4)]
    for task_id in tasks:
        await harness.wait_task(task_id, "assigned", status="assigned")
    await eventually(lambda: len(receiver.calls) == 1, message="the person's webhook")
    await asyncio.sleep(0.3)
    # The bot's three assignments never went to the notifier; the person's one did.
    assert handled == ["person"]
    [notice] = receiver.verified()
    assert notice["task"]["task_id"] in tasks
