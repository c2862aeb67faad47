"""Worker channels end to end on the real broker: long and short poll, WebSocket, leases.

The workers here are plain HTTP/WebSocket clients, as a service in any language would be.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.bots import EventTap
from tests.conftest import Harness, eventually
from workmesh.channels.service import WorkerChannels

pytestmark = pytest.mark.e2e


async def submit(harness: Harness, kind: str = "job", priority: int = 0, **extra: Any) -> str:
    status, body = await harness.api(
        "POST", "/api/v1/tasks", json={"kind": kind, "priority": priority, **extra}
    )
    assert status == 201, body
    return str(body["id"])


async def poll(harness: Harness, token: str, wait: float = 0, limit: int = 10) -> dict[str, Any]:
    status, body = await harness.api(
        "GET", f"/api/v1/worker/tasks?wait={wait}&limit={limit}", token=token
    )
    assert status == 200, body
    return dict(body)


async def set_status(harness: Harness, token: str, task_id: str, status: str) -> int:
    code, _ = await harness.api(
        "POST", f"/api/v1/worker/tasks/{task_id}/status", token=token, json={"status": status}
    )
    return code


async def test_long_poll_answers_as_soon_as_a_task_is_assigned(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("clerk", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("clerk")
    waiting = asyncio.create_task(poll(harness, token, wait=20))
    await asyncio.sleep(0.3)
    assert not waiting.done(), "a long poll with nothing to hand out must wait"
    task_id = await submit(harness, payload={"n": 1})
    got = await asyncio.wait_for(waiting, 10)
    [assignment] = got["assignments"]
    assert assignment["task_id"] == task_id
    assert assignment["payload"] == {"n": 1}
    assert assignment["leased_until"]
    assert await set_status(harness, token, task_id, "in_progress") == 200
    assert await set_status(harness, token, task_id, "done") == 200
    await harness.wait_task(task_id, "done over HTTP", status="done")


async def test_short_poll_answers_at_once_and_refuses_bad_requests(harness: Harness) -> None:
    await harness.start(channels={"max_wait": 5})
    token = await harness.add_worker("clerk")
    assert await poll(harness, token, wait=0) == {"assignments": [], "cancelled": []}
    for query, reason in [
        ("wait=abc", "wait must be a number"),
        ("wait=6", "wait must be between 0 and 5 seconds"),
        ("wait=-1", "wait must be between 0 and 5 seconds"),
        ("limit=0", "limit must be between 1 and 100"),
    ]:
        status, body = await harness.api("GET", f"/api/v1/worker/tasks?{query}", token=token)
        assert status == 400, query
        assert reason in body["error"]
    status, body = await harness.api("GET", "/api/v1/worker/tasks")  # the admin's token
    assert status == 403
    status, body = await harness.api("GET", "/api/v1/worker/tasks", token=None)
    assert status == 401


async def test_polls_keep_their_amqp_channel_unless_they_waited_as_a_consumer(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = await harness.start()
    channels = next(c for c in mesh.capabilities if isinstance(c, WorkerChannels))
    opened = 0
    open_channel = channels.connection.channel

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return open_channel(*args, **kwargs)

    monkeypatch.setattr(channels.connection, "channel", counted)
    token = await harness.add_worker("poller", capacity=3)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("poller")
    for _ in range(3):
        assert (await poll(harness, token))["assignments"] == []
    task_id = await submit(harness)
    await eventually(
        lambda: _has_assignment(harness, token, task_id), message="assignment by short poll"
    )
    assert opened == 1  # basic.get alone: every poll used the one channel
    # A long poll that waits as a consumer gives its channel up (a message may have come in
    # after its wait); the next poll opens another, and nothing is lost meanwhile.
    assert (await poll(harness, token, wait=0.3))["assignments"] == []
    assert opened == 1
    later = await submit(harness)
    body = await poll(harness, token, wait=5)
    assert [a["task_id"] for a in body["assignments"]] == [later]
    assert opened == 2


async def _has_assignment(harness: Harness, token: str, task_id: str) -> bool:
    body = await poll(harness, token)
    return task_id in [a["task_id"] for a in body["assignments"]]


async def test_poll_hands_out_by_priority_and_least_load_spans_channels(harness: Harness) -> None:
    await harness.start()
    http_a = await harness.add_worker("http-a", capacity=3)
    http_b = await harness.add_worker("http-b", capacity=3)
    bot = await harness.bot("bot-c", capacity=3, mode="hold")
    for token in (http_a, http_b):
        await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("http-a", "http-b", "bot-c")
    priorities = [1, 9, 5, 3, 7, 0, 8, 2, 6]
    ids = {await submit(harness, priority=p): p for p in priorities}

    async def all_assigned() -> bool:
        _, body = await harness.api("GET", "/api/v1/tasks")
        return sum(t["worker_id"] is not None for t in body["tasks"]) == len(ids)

    await eventually(all_assigned, message="every task assigned")
    got_a = (await poll(harness, http_a))["assignments"]
    got_b = (await poll(harness, http_b))["assignments"]
    # Least load: three workers of capacity 3, nine tasks, whatever the channel.
    assert len(got_a) == len(got_b) == len(bot.received) == 3
    for got in (got_a, got_b):
        shown = [a["priority"] for a in got]
        assert shown == sorted(shown, reverse=True), "a worker's queue hands out by priority"
    handed = [a["task_id"] for a in got_a + got_b] + [r.task_id for r in bot.received]
    assert sorted(handed) == sorted(ids)


async def test_a_task_not_started_within_its_lease_goes_to_another_worker(
    harness: Harness,
) -> None:
    await harness.start(channels={"lease": 0.5})
    slow = await harness.add_worker("slow", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=slow)
    await harness.wait_online("slow")
    async with EventTap(harness.amqp_url, ("task.lease_expired",)) as tap:
        task_id = await submit(harness)
        [taken] = (await poll(harness, slow, wait=10))["assignments"]
        assert taken["task_id"] == task_id
        # Another worker comes; "slow" sits on the task past its lease.
        quick = await harness.bot("quick", capacity=1)
        await harness.wait_task(task_id, "the task done by the other worker", status="done")
        assert [r.task_id for r in quick.received] == [task_id]
        # The review publishes the event after the task went back to the queue.
        await eventually(
            lambda: tap.of("task.lease_expired") == [{"task_id": task_id, "worker_id": "slow"}],
            message="task.lease_expired",
        )
    # Too late: the task is no longer the slow worker's.
    assert await set_status(harness, slow, task_id, "in_progress") == 403


async def test_a_started_task_keeps_its_worker_past_the_lease(harness: Harness) -> None:
    await harness.start(channels={"lease": 0.3})
    token = await harness.add_worker("steady", capacity=1)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("steady")
    task_id = await submit(harness)
    [taken] = (await poll(harness, token, wait=10))["assignments"]
    assert await set_status(harness, token, taken["task_id"], "in_progress") == 200
    await asyncio.sleep(1.0)  # three leases long; the review runs every 0.1 s
    await harness.wait_task(
        task_id, "still on its worker", status="in_progress", worker_id="steady"
    )


class WsWorker:
    """A WebSocket worker as a service author would write one with aiohttp."""

    def __init__(self, harness: Harness, token: str) -> None:
        self.harness, self.token = harness, token
        self.frames: list[dict[str, Any]] = []
        self.socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self, hello: bool = False) -> WsWorker:
        headers = {} if hello else {"Authorization": f"Bearer {self.token}"}
        self.socket = await self.harness.http.ws_connect(
            self.harness.base + "/api/v1/worker/ws", headers=headers
        )
        if hello:
            await self.socket.send_json({"type": "hello", "token": self.token})
        self._reader = asyncio.create_task(self._read())
        await eventually(lambda: self.of("welcome") != [], message="welcome")
        return self

    async def _read(self) -> None:
        assert self.socket is not None
        async for frame in self.socket:
            if frame.type is aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(frame.data))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def send(self, body: dict[str, Any]) -> None:
        assert self.socket is not None
        await self.socket.send_json(body)

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
        if self._reader is not None:
            await self._reader


async def test_websocket_pushes_assignments_and_takes_status_changes(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("socket", capacity=2)
    ws = await WsWorker(harness, token).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("socket")
    first, second = await submit(harness, priority=2), await submit(harness, priority=7)
    await eventually(lambda: len(ws.of("assignment")) == 2, message="two assignments pushed")
    assert {a["task_id"] for a in ws.of("assignment")} == {first, second}
    for task_id in (first, second):
        await ws.send({"type": "status", "task_id": task_id, "status": "in_progress"})
        await ws.send({"type": "status", "task_id": task_id, "status": "done", "result": 1})
    await harness.wait_task(first, "first done over the socket", status="done", result=1)
    await harness.wait_task(second, "second done over the socket", status="done", result=1)
    await eventually(lambda: len(ws.of("status")) == 4, message="four status answers")
    await ws.close()


async def test_a_removed_workers_socket_is_closed_at_its_next_heartbeat(
    harness: Harness,
) -> None:
    await harness.start()
    token = await harness.add_worker("leaving")
    ws = await WsWorker(harness, token).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("leaving")
    status, body = await harness.api("DELETE", "/api/v1/workers/leaving")
    assert status == 204, body
    await ws.send({"type": "heartbeat"})
    assert ws._reader is not None
    assert ws.socket is not None
    await asyncio.wait_for(ws._reader, 10)  # the mesh closed the socket
    assert ws.socket.close_code == 4403


async def test_websocket_hands_out_waiting_assignments_by_priority(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("later", capacity=4)
    await harness.api("POST", "/api/v1/worker/heartbeat", token=token)
    await harness.wait_online("later")
    ids = {await submit(harness, priority=p): p for p in (2, 8, 0, 5)}

    async def all_assigned() -> bool:
        _, body = await harness.api("GET", "/api/v1/tasks?status=assigned")
        return len(body["tasks"]) == len(ids)

    await eventually(all_assigned, message="every task assigned while no channel is open")
    ws = await WsWorker(harness, token).connect()
    await eventually(lambda: len(ws.of("assignment")) == 4, message="four assignments pushed")
    assert [a["priority"] for a in ws.of("assignment")] == [8, 5, 2, 0]
    await ws.close()


async def test_a_dropped_socket_loses_nothing(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("flaky", capacity=1)
    ws = await WsWorker(harness, token).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("flaky")
    task_id = await submit(harness)
    await eventually(lambda: len(ws.of("assignment")) == 1, message="the assignment pushed")
    await ws.close()  # gone before confirming anything
    again = await WsWorker(harness, token).connect(hello=True)
    await eventually(lambda: len(again.of("assignment")) == 1, message="the assignment again")
    assert again.of("assignment")[0]["task_id"] == task_id
    await again.send({"type": "status", "task_id": task_id, "status": "done"})
    await harness.wait_task(task_id, "done after the reconnect", status="done")
    await again.close()


async def test_two_channels_of_one_worker_never_get_one_task_twice(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("both", capacity=4)
    ws = await WsWorker(harness, token).connect()
    await ws.send({"type": "heartbeat"})
    await harness.wait_online("both")
    ids = [await submit(harness, priority=i % 10) for i in range(40)]
    by_poll: list[str] = []
    done_over_ws: set[str] = set()

    async def finish_pushed() -> None:
        while len(by_poll) + len(done_over_ws) < len(ids):
            for frame in ws.of("assignment"):
                if frame["task_id"] not in done_over_ws:
                    done_over_ws.add(frame["task_id"])
                    await ws.send({"type": "status", "task_id": frame["task_id"], "status": "done"})
            await asyncio.sleep(0.02)

    async def finish_polled() -> None:
        while len(by_poll) + len(done_over_ws) < len(ids):
            for assignment in (await poll(harness, token, wait=0.5))["assignments"]:
                by_poll.append(assignment["task_id"])
                assert await set_status(harness, token, assignment["task_id"], "done") == 200

    await asyncio.wait_for(asyncio.gather(finish_pushed(), finish_polled()), 60)
    pushed = [f["task_id"] for f in ws.of("assignment")]
    assert len(pushed) == len(set(pushed)), "the socket got a task twice"
    assert len(by_poll) == len(set(by_poll)), "the poll got a task twice"
    assert not set(pushed) & set(by_poll), "both channels got the same task"
    assert set(pushed) | set(by_poll) == set(ids)
    assert by_poll, "the poll took part"
    assert pushed, "the socket took part"
    await ws.close()


async def test_websocket_refuses_bad_input_with_reasons(harness: Harness) -> None:
    await harness.start()
    token = await harness.add_worker("careful")
    other = await harness.add_worker("other")
    ws = await WsWorker(harness, token).connect()
    await ws.socket.send_str("not json")  # type: ignore[union-attr]
    await ws.send({"type": "dance"})
    await ws.send({"type": "status", "task_id": "nope", "status": "sleeping"})
    await ws.send({"type": "status", "task_id": "no-such-task", "status": "done"})
    await eventually(lambda: len(ws.of("error")) == 4, message="four errors")
    errors = [e["error"] for e in ws.of("error")]
    assert "a message must be a JSON object" in errors[0]
    assert "unknown message type 'dance'" in errors[1]
    assert "in_progress" in errors[2]
    assert ws.of("error")[3]["status"] == 404
    await ws.close()
    # A task that is another worker's.
    theirs = await WsWorker(harness, other).connect()
    await theirs.send({"type": "heartbeat"})
    await harness.wait_online("other")
    task_id = await submit(harness)
    await eventually(lambda: len(theirs.of("assignment")) == 1, message="pushed to other")
    mine = await WsWorker(harness, token).connect()
    await mine.send({"type": "status", "task_id": task_id, "status": "done"})
    await eventually(lambda: len(mine.of("error")) == 1, message="not yours")
    assert mine.of("error")[0]["status"] == 403
    for socket in (theirs, mine):
        await socket.close()
    # A hello with a token that is not a worker's closes the socket with a reason.
    async with harness.http.ws_connect(harness.base + "/api/v1/worker/ws") as bad:
        await bad.send_json({"type": "hello", "token": "wm_nonsense"})
        frame = await bad.receive()
        assert frame.type is aiohttp.WSMsgType.CLOSE
        assert bad.close_code == 4403
