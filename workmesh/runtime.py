"""Run the mesh's roles in one process: ``api``, ``dispatcher``, a capability, or ``all``.

Each role serves HTTP on the configured port: the api role the whole task API, a capability its
own routes, every role ``/metrics`` and ``/healthz``. SIGINT/SIGTERM stop it gracefully: the
HTTP server stops taking requests, the dispatcher is cancelled (safe at any point: nothing is
acknowledged before its effects are committed and published), capabilities stop, and
FastStream lets running handlers finish.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from enum import StrEnum

import aio_pika
from aiohttp import web
from sqlalchemy import text
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from brokers import build_broker
from rabbitmq.topology import declare_topology
from workmesh.api.app import HealthCheck, build_app
from workmesh.api.bus import ApiBus
from workmesh.capabilities import Capability, MeshContext, default_capabilities
from workmesh.channels.service import WorkerChannels
from workmesh.db import create_engine, migrate, session_factory
from workmesh.engine.leader import Dispatcher, cancel_and_wait
from workmesh.metrics import Metrics
from workmesh.settings import Settings

log = logging.getLogger(__name__)


class Role(StrEnum):
    """The core roles; every capability is a role of its own too, named by ``Capability.name``."""

    ALL = "all"
    API = "api"
    DISPATCHER = "dispatcher"


async def declare_mesh_topology(settings: Settings, wait: float = 60.0) -> None:
    """Declare exchanges and queues, waiting for RabbitMQ to come up (compose starts us early)."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(wait),
        wait=wait_exponential(multiplier=0.2, max=5),
        retry=retry_if_exception_type((OSError, aio_pika.exceptions.AMQPError)),
        reraise=True,
    ):
        with attempt:
            connection = await aio_pika.connect(settings.amqp.url)
            async with connection:
                await declare_topology(await connection.channel(), settings.dispatch.retry_delays)


class Mesh:
    """One process's share of the mesh: its roles started together and stopped in order."""

    def __init__(
        self,
        settings: Settings,
        role: str,
        capabilities: list[Capability] | None = None,
    ) -> None:
        """``capabilities`` defaults to every one, with settings from the environment."""
        known = default_capabilities() if capabilities is None else capabilities
        names = [c.name for c in known]
        if role not in [*Role, *names]:
            raise ValueError(f"unknown role {role!r}; roles: {', '.join([*Role, *names])}")
        self.settings = settings
        self.role = role
        self.capabilities = [c for c in known if role in (Role.ALL, c.name)]
        if role in (Role.ALL, Role.API):
            # Part of the api role: how workers without an AMQP consumer get their tasks.
            self.capabilities.insert(0, WorkerChannels(settings))
        self.engine = create_engine(settings.database)
        self.sessions = session_factory(self.engine)
        self.metrics = Metrics()
        serves_api = role in (Role.ALL, Role.API)
        dispatches = role in (Role.ALL, Role.DISPATCHER)
        self.broker = build_broker(settings, self.sessions, self.metrics, consume=dispatches)
        self.dispatcher = Dispatcher(settings, self.sessions, self.metrics) if dispatches else None
        health: list[HealthCheck] = [self._database_ok, self._rabbitmq_ok]
        if self.dispatcher is not None:
            health.append(self._dispatcher_ok)
        bus = ApiBus(self.broker) if serves_api else None
        self.app = build_app(settings, self.sessions, self.metrics, bus, health)
        context = MeshContext(settings, self.sessions, self.metrics, self.broker)
        for capability in self.capabilities:
            capability.attach(context, self.app)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.dispatcher_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await declare_mesh_topology(self.settings)
        await self.broker.start()
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        for capability in self.capabilities:
            await capability.start()
        log.info(
            "workmesh %s role serving on http://%s:%s",
            self.role,
            self.settings.http.host,
            self.settings.http.port,
        )
        if self.dispatcher is not None:
            self.dispatcher_task = asyncio.create_task(self.dispatcher.run(), name="dispatcher")

    async def stop(self) -> None:
        log.info("workmesh %s role stopping", self.role)
        await self.runner.cleanup()
        if self.dispatcher_task is not None:
            await cancel_and_wait(self.dispatcher_task)
        for capability in reversed(self.capabilities):
            await capability.stop()
        await self.broker.stop()
        await self.engine.dispose()

    async def _database_ok(self) -> dict[str, bool]:
        try:
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:
            return {"database": False}
        return {"database": True}

    async def _rabbitmq_ok(self) -> dict[str, bool]:
        return {"rabbitmq": await self.broker.ping(timeout=2.0)}

    async def _dispatcher_ok(self) -> dict[str, bool]:
        assert self.dispatcher is not None
        return {"dispatcher": self.dispatcher.ready.is_set()}


async def run(settings: Settings, role: str, *, run_migrations: bool = True) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = _stop_on_signals()
    if run_migrations:
        await asyncio.to_thread(migrate, settings.database.url)
    mesh = Mesh(settings, role)
    await mesh.start()
    freeze_startup_heap()
    try:
        await stop.wait()
    finally:
        await mesh.stop()


def freeze_startup_heap() -> None:
    """Keep what start-up made (modules, mappings, compiled statements: over 100,000 objects)
    out of the garbage collector's full passes, which stop the event loop while they walk
    every tracked object. Measured in a 100,000-item stock push: 25 full passes of 75-97 ms
    each, every one delaying the requests in flight; after this, 5-9 ms."""
    gc.collect()
    gc.freeze()


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop
