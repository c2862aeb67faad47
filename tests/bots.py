"""External workers for the tests, written in plain aio-pika as a bot author would.

Nothing here imports workmesh: these bots speak only the documented AMQP contract
(docs/contract.md), so the tests check the contract, not our own client code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import aio_pika

Mode = Literal["done", "hold", "fail", "reject", "silent"]


@dataclass
class Received:
    task_id: str
    kind: str
    payload: dict[str, Any]
    priority: int
    attempt: int
    at: float
    redelivered: bool


@dataclass
class Bot:
    amqp_url: str
    worker_id: str
    token: str
    capacity: int = 1
    mode: Mode = "done"
    heartbeat_every: float = 0.2
    received: list[Received] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    held: dict[str, aio_pika.abc.AbstractIncomingMessage] = field(default_factory=dict)
    _connection: aio_pika.abc.AbstractConnection | None = None
    _heartbeats: asyncio.Task[None] | None = None
    beating: bool = True

    async def start(self) -> Bot:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel(publisher_confirms=True)
        # One more than the capacity, as the contract advises: the dispatcher never sends more
        # assignments than the capacity, so the extra slot keeps room for a cancel notice.
        await channel.set_qos(prefetch_count=self.capacity + 1)
        self._events = await channel.get_exchange("workmesh.events")
        queue = await channel.get_queue(f"workmesh.worker.{self.worker_id}")
        await queue.consume(self._on_message)
        self._heartbeats = asyncio.create_task(self._beat())
        return self

    async def stop(self) -> None:
        if self._heartbeats:
            self._heartbeats.cancel()
            # A bot whose connection the test killed ends with that error; that is fine here.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._heartbeats
        if self._connection:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def publish(
        self, routing_key: str, body: dict[str, Any], token: str | None = None
    ) -> None:
        headers: dict[str, Any] = {"x-workmesh-token": self.token if token is None else token}
        await self._events.publish(
            aio_pika.Message(
                json.dumps(body).encode(),
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def report(self, kind: str, task_id: str, **extra: Any) -> None:
        await self.publish(
            f"task.{kind}", {"task_id": task_id, "worker_id": self.worker_id, **extra}
        )

    async def _beat(self) -> None:
        while True:
            if self.beating:
                await self.publish("worker.heartbeat", {"worker_id": self.worker_id})
            await asyncio.sleep(self.heartbeat_every)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        body = json.loads(message.body)
        if message.type == "cancel":
            self.cancels.append(body["task_id"])
            held = self.held.pop(body["task_id"], None)
            if held is not None:
                await held.ack()
            await message.ack()
            return
        self.received.append(
            Received(
                body["task_id"],
                body["kind"],
                body["payload"],
                body["priority"],
                body["attempt"],
                time.monotonic(),
                bool(message.redelivered),
            )
        )
        if self.mode == "silent":
            return  # takes it and says nothing, like a crashed process that kept its socket
        if self.mode == "hold":
            self.held[body["task_id"]] = message
            await self.report("started", body["task_id"])
            return
        if self.mode == "done":
            await self.report("done", body["task_id"], result={"by": self.worker_id})
        elif self.mode == "fail":
            await self.report("failed", body["task_id"], error="boom")
        elif self.mode == "reject":
            await self.report("rejected", body["task_id"])
        await message.ack()

    async def finish(self, task_id: str, kind: str = "done") -> None:
        message = self.held.pop(task_id)
        await self.report(
            kind, task_id, **({"result": {"by": self.worker_id}} if kind == "done" else {})
        )
        await message.ack()

    async def finish_all(self, kind: str = "done") -> None:
        for task_id in list(self.held):
            await self.finish(task_id, kind)

    @property
    def load(self) -> int:
        return len(self.held)

    def task_ids(self) -> list[str]:
        return [r.task_id for r in self.received]


@dataclass
class Producer:
    """A script that submits tasks over AMQP, in plain aio-pika."""

    amqp_url: str
    token: str | None

    async def __aenter__(self) -> Producer:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await channel.get_exchange("workmesh.tasks")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def submit_raw(
        self,
        body: bytes,
        priority: int = 0,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
    ) -> None:
        if headers is None:
            headers = {"x-workmesh-token": self.token} if self.token else {}
        await self._exchange.publish(
            aio_pika.Message(
                body,
                priority=priority,
                headers=headers,
                message_id=message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
            ),
            routing_key="submit",
        )

    async def submit(self, kind: str = "noop", priority: int = 0, **fields: Any) -> str:
        task_id = fields.pop("id", None) or str(uuid.uuid4())
        body = {
            "id": task_id,
            "kind": kind,
            "priority": priority,
            "payload": fields.pop("payload", {}),
            **fields,
        }
        await self.submit_raw(json.dumps(body).encode(), priority=priority)
        return task_id


async def read_dead_letters(
    amqp_url: str, expect: int, timeout: float = 10.0
) -> list[tuple[dict[str, Any], bytes]]:
    """Take ``expect`` messages off workmesh.dead: (headers, body) of each."""
    connection = await aio_pika.connect(amqp_url)
    found: list[tuple[dict[str, Any], bytes]] = []
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue("workmesh.dead")
        deadline = time.monotonic() + timeout
        while len(found) < expect and time.monotonic() < deadline:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            found.append((dict(message.headers or {}), message.body))
    return found


@dataclass
class EventTap:
    """Listens to workmesh.events on a queue of its own, as any service may."""

    amqp_url: str
    keys: tuple[str, ...] = ("#",)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def __aenter__(self) -> EventTap:
        self._connection = await aio_pika.connect(self.amqp_url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        for key in self.keys:
            await queue.bind("workmesh.events", routing_key=key)
        await queue.consume(self._on_event, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._connection.close()

    async def _on_event(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.events.append((message.routing_key or "", json.loads(message.body)))

    def of(self, key: str) -> list[dict[str, Any]]:
        return [body for k, body in self.events if k == key]
