"""One worker's WebSocket session: assignments pushed as they are made; status changes and
heartbeats sent back on the same socket.

The session is a consumer on the worker's queue that keeps each assignment unacknowledged in
RabbitMQ until the worker says what it did with it. So a dropped socket loses nothing: RabbitMQ
takes the unconfirmed assignments back into the worker's queue, and the next session (or long
poll, or bot) gets them again. An assignment the worker sits on past its lease is withdrawn
here and returned to the task queue by the dispatcher.

Messages, all JSON objects with a ``type`` (docs/channels.md has the whole protocol):
client → mesh: ``hello`` {token} (when no Authorization header could be sent, as in browsers),
``status`` {task_id, status, result?, error?}, ``heartbeat``;
mesh → client: ``welcome``, ``assignment``, ``cancel``, ``withdrawn``, ``status``, ``queue``,
``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aiohttp import web
from pydantic import ValidationError

from models.base import utcnow
from rabbitmq.topology import INTAKE_QUEUE
from schemas.tasks import StatusChange, TaskView
from workmesh.api.common import SESSIONS, SETTINGS, WRITES, ApiError
from workmesh.api.tasks import apply_status_change
from workmesh.channels.mailbox import Delivery, Mailbox
from workmesh.security import Role
from workmesh.services import workers
from workmesh.services.tokens import authenticate

log = logging.getLogger(__name__)

HELLO_WITHIN = 10.0  # seconds a socket may stay open without saying who it is
CHORES_EVERY = 1.0  # seconds between lease checks and queue-depth looks


@dataclass
class Held:
    message: AbstractIncomingMessage
    until: datetime


class WorkerSession:
    def __init__(
        self,
        socket: web.WebSocketResponse,
        app: web.Application,
        connection: AbstractRobustConnection,
        mailbox: Mailbox,
        worker_id: str,
        token: str,
    ) -> None:
        self.socket = socket
        self.app = app
        self.connection = connection
        self.mailbox = mailbox
        self.worker_id = worker_id
        self.token = token
        self.held: dict[str, Held] = {}
        self._sending = asyncio.Lock()
        # Status frames are applied side by side (each waits for its own commit and report),
        # one after another for the same task; ``_room`` bounds how many run at once.
        self._applying: dict[str, asyncio.Task[None]] = {}
        self._room = asyncio.Semaphore(1)
        self._beating: asyncio.Task[None] | None = None

    async def run(self) -> None:
        channel = await self.connection.channel()
        try:
            capacity = await self._capacity()
            # Room for every task the worker may hold, and one more for a cancel notice.
            await channel.set_qos(prefetch_count=capacity + 1)
            self._room = asyncio.Semaphore(capacity + 1)
            queue = await self.mailbox.open(channel, self.worker_id)
            await self.send({"type": "welcome", "worker_id": self.worker_id})
            # RabbitMQ delivers in priority order; the inbox keeps that order through the
            # database check each delivery needs (callbacks would run side by side).
            inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
            await queue.consume(inbox.put)
            helpers = [
                asyncio.create_task(self._deliver(inbox)),
                asyncio.create_task(self._chores(channel)),
            ]
            try:
                async for frame in self.socket:
                    if frame.type is aiohttp.WSMsgType.TEXT:
                        await self._on_frame(frame.data)
            finally:
                # Status changes the worker sent before it went are applied, not dropped.
                await asyncio.gather(
                    *self._applying.values(),
                    *([self._beating] if self._beating else []),
                    return_exceptions=True,
                )
                for helper in helpers:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
        finally:
            # Closing the channel hands every unconfirmed assignment back to the worker's queue.
            with contextlib.suppress(Exception):
                await channel.close()

    async def send(self, body: dict[str, Any]) -> None:
        async with self._sending:
            if not self.socket.closed:
                await self.socket.send_str(json.dumps(body, default=str))

    async def _capacity(self) -> int:
        async with self.app[SESSIONS]() as session:
            views = await workers.worker_views(session, self.worker_id)
        return views[0].capacity if views else 1

    async def _deliver(self, inbox: asyncio.Queue[AbstractIncomingMessage]) -> None:
        while True:
            try:
                messages = [await inbox.get()]
                while not inbox.empty():
                    messages.append(inbox.get_nowait())
                # Leased together (one transaction), handed over in the queue's order.
                admitted = await self.mailbox.admit_all(self.worker_id, messages)
                for message, (delivery, until) in zip(messages, admitted, strict=True):
                    await self._hand_over(message, delivery, until)
            except Exception:
                # The database or RabbitMQ failed under us: end the session, so that RabbitMQ
                # takes back what it holds and the worker reconnects to a fresh one.
                log.exception("worker %s: a delivery failed; closing its socket", self.worker_id)
                await self.socket.close(code=1011, message=b"internal error; reconnect")
                return

    async def _hand_over(
        self, message: AbstractIncomingMessage, delivery: Delivery | None, until: datetime | None
    ) -> None:
        if delivery is None:
            await message.ack()  # no longer true: another worker has it, or it ended
            return
        task_id = str(delivery.body["task_id"])
        if delivery.kind == "cancel":
            await message.ack()
            held = self.held.pop(task_id, None)
            if held is not None:
                await held.message.ack()
            await self.send({"type": "cancel", "task_id": task_id})
            return
        assert until is not None
        self.held[task_id] = Held(message, until)
        await self.send({"type": "assignment", **delivery.body})

    async def _on_frame(self, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            await self.send({"type": "error", "error": "a message must be a JSON object"})
            return
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "status":
            await self._room.acquire()  # past the bound, the socket is read no further
            task_id = frame.get("task_id")
            key = task_id if isinstance(task_id, str) else ""
            applying = asyncio.create_task(self._apply(frame, self._applying.get(key)))
            self._applying[key] = applying
            applying.add_done_callback(lambda done: self._applied(key, done))
        elif kind == "heartbeat":
            # Written in the background, like status changes: it waits for a shared
            # transaction, and the socket's other frames need not wait behind it. One at a
            # time: a heartbeat sent while the last is being written adds nothing.
            if self._beating is None or self._beating.done():
                self._beating = asyncio.create_task(self._beat())
        else:
            await self.send(
                {"type": "error", "error": f"unknown message type {kind!r}; use status, heartbeat"}
            )

    async def _beat(self) -> None:
        try:
            await workers.heartbeat_written(self.app[WRITES], self.worker_id)
        except workers.UnknownWorker:
            await self.socket.close(code=4403, message=b"this worker has been removed")
        except Exception:
            log.exception("worker %s: a heartbeat failed; closing its socket", self.worker_id)
            await self.socket.close(code=1011, message=b"internal error; reconnect")

    async def _apply(self, frame: dict[str, Any], before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None:
                with contextlib.suppress(Exception):
                    await before  # the same task's earlier change first
            await self._on_status(frame)
        except Exception:
            # The database or RabbitMQ failed under us: end the session (as a failed delivery
            # does), so that RabbitMQ takes back what it holds and the worker reconnects.
            log.exception("worker %s: a status change failed; closing its socket", self.worker_id)
            await self.socket.close(code=1011, message=b"internal error; reconnect")
        finally:
            self._room.release()

    def _applied(self, key: str, done: asyncio.Task[None]) -> None:
        if self._applying.get(key) is done:
            del self._applying[key]

    async def _on_status(self, frame: dict[str, Any]) -> None:
        task_id = frame.get("task_id")
        try:
            change = StatusChange.model_validate(
                {k: v for k, v in frame.items() if k not in ("type", "task_id")}
            )
        except ValidationError as error:
            reason = "; ".join(e["msg"] for e in error.errors())
            await self.send({"type": "error", "task_id": task_id, "error": reason})
            return
        if not isinstance(task_id, str):
            await self.send({"type": "error", "error": "a status message needs a task_id"})
            return
        try:
            task = await apply_status_change(self.app, task_id, self.worker_id, self.token, change)
        except ApiError as error:
            if error.status in (403, 404):
                await self._settle(task_id)  # not this worker's any more: let the message go
            await self.send(
                {"type": "error", "task_id": task_id, "status": error.status, "error": error.reason}
            )
            return
        await self._settle(task_id)
        view = TaskView.model_validate(task).model_dump(mode="json")
        await self.send({"type": "status", "task": view})

    async def _settle(self, task_id: str) -> None:
        held = self.held.pop(task_id, None)
        if held is not None:
            await held.message.ack()

    async def _chores(self, channel: AbstractRobustChannel) -> None:
        """Withdraw assignments whose lease ran out; tell the worker how long the queue is."""
        last_depth: int | None = None
        while True:
            now = utcnow()
            for task_id, held in list(self.held.items()):
                if held.until <= now:
                    await self._settle(task_id)
                    await self.send(
                        {"type": "withdrawn", "task_id": task_id, "reason": "lease expired"}
                    )
            # robust=False: a robust channel answers a repeated passive declare from its cache,
            # which would freeze the count at its first value.
            intake = await channel.declare_queue(INTAKE_QUEUE, passive=True, robust=False)
            depth = int(intake.declaration_result.message_count or 0)
            if depth != last_depth:
                last_depth = depth
                await self.send({"type": "queue", "waiting": depth})
            await asyncio.sleep(CHORES_EVERY)


async def identify(socket: web.WebSocketResponse, app: web.Application) -> tuple[str, str] | None:
    """Read the ``hello`` that names the worker by its token; None (socket closed) if none."""
    try:
        frame = await socket.receive_json(timeout=HELLO_WITHIN)
    except (TimeoutError, ValueError, TypeError):
        await socket.close(code=4401, message=b"send {'type': 'hello', 'token': ...} first")
        return None
    token = frame.get("token") if isinstance(frame, dict) else None
    if not isinstance(token, str) or frame.get("type") != "hello":
        await socket.close(code=4401, message=b"the first message must be a hello with a token")
        return None
    async with app[SESSIONS]() as session:
        who = await authenticate(session, token, app[SETTINGS].security.admin_token)
    if who is None or who.role is not Role.WORKER:
        await socket.close(code=4403, message=b"unknown token, or not a worker's token")
        return None
    return who.name, token
