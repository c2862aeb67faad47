"""The worker channels as one part of the api role: its AMQP connection, the mailbox that
hands out assignments, the notifier, and their routes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

import aio_pika
import aiohttp
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aiohttp import web
from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitQueue

from rabbitmq.topology import NOTIFY
from workmesh.api.common import WRITES
from workmesh.capabilities import MeshContext
from workmesh.channels.mailbox import Delivery, Mailbox
from workmesh.channels.notify import Notifier
from workmesh.channels.routes import CHANNELS, routes
from workmesh.settings import Settings
from workmesh.web import attach_web

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs


# AMQP channels kept open between polls, at most; polls beyond them open channels of their own.
IDLE_CHANNELS = 32


class WorkerChannels:
    name = "channels"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = asyncio.Event()
        self._connection: AbstractRobustConnection | None = None
        self._http: aiohttp.ClientSession | None = None
        self._mailbox: Mailbox | None = None
        self._notifier: Notifier | None = None
        self._idle_channels: list[AbstractChannel] = []  # for long and short polls

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self._sessions = mesh.sessions
        self._writes = app[WRITES]
        app[CHANNELS] = self
        app.add_routes(routes)
        attach_web(mesh, app)  # the pages for people and operators (docs/web.md)

        @mesh.broker.subscriber(
            # Declared and bound with the rest of the topology (rabbitmq/topology.py).
            RabbitQueue(
                NOTIFY.name,
                durable=True,
                arguments=cast("ClassicQueueArgs", NOTIFY.arguments),
                declare=False,
            ),
            ack_policy=AckPolicy.NACK_ON_ERROR,
        )
        async def on_assigned(body: dict[str, Any]) -> None:
            await self._ready.wait()
            assert self._notifier is not None
            await self._notifier.on_assigned(str(body["task_id"]), str(body["worker_id"]))

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(self.settings.amqp.url)
        self._http = aiohttp.ClientSession()
        self._mailbox = Mailbox(self._writes, self.settings.channels.lease)
        self._notifier = Notifier(
            self.settings.channels, self._sessions, self._connection, self._http
        )
        self._ready.set()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._connection is not None:
            await self._connection.close()

    @property
    def connection(self) -> AbstractRobustConnection:
        assert self._connection is not None, "the channels have not started"
        return self._connection

    @property
    def mailbox(self) -> Mailbox:
        assert self._mailbox is not None, "the channels have not started"
        return self._mailbox

    @property
    def notifier(self) -> Notifier:
        assert self._notifier is not None, "the channels have not started"
        return self._notifier

    async def take(self, worker_id: str, limit: int, wait: float) -> list[Delivery]:
        """A poll's deliveries, on an AMQP channel kept from an earlier poll where one is idle:
        opening and closing one per request cost two round trips, and RabbitMQ a process
        started and stopped each time."""
        channel = self._idle_channels.pop() if self._idle_channels else None
        if channel is None or channel.is_closed:
            channel = await self.connection.channel()
        taken = None
        try:
            taken = await self.mailbox.take(channel, worker_id, limit, wait)
            return taken.deliveries
        finally:
            if (
                taken is not None
                and taken.channel_clean
                and not channel.is_closed
                and len(self._idle_channels) < IDLE_CHANNELS
            ):
                self._idle_channels.append(channel)
            else:
                # Anything a consumer got after the wait was over goes back to the queue here.
                await channel.close()
