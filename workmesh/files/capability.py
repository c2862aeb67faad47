"""The ``files`` capability: chunked upload, refer keys renewed by a chain of delayed
RabbitMQ messages, downloads by key, SSE, analysis results and comments."""

from __future__ import annotations

import logging
from datetime import timedelta

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from sqlalchemy import select

from models.base import utcnow
from models.files import StoredFile
from rabbitmq.topology import DEAD_EXCHANGE, EVENTS_EXCHANGE
from schemas.files import RotationDue
from workmesh.capabilities import MeshContext
from workmesh.files.bus import CHAIN_KEYS, ROTATE_QUEUE, FilesBus
from workmesh.files.downloads import DownloadLimiter
from workmesh.files.notifier import Notifier
from workmesh.files.rotation import RotationSchedule
from workmesh.files.rotator import Rotator
from workmesh.files.routes_analysis import AnalysisRoutes
from workmesh.files.routes_intake import IntakeRoutes
from workmesh.files.runtime import FilesMetrics, FilesRuntime
from workmesh.files.settings import FilesSettings
from workmesh.files.storage import LocalDiskStorage, Storage

log = logging.getLogger(__name__)


class FilesCapability:
    name = "files"

    def __init__(self, settings: FilesSettings | None = None, storage: Storage | None = None):
        self.settings = settings or FilesSettings()
        self.storage = storage or LocalDiskStorage(self.settings.directory)
        self.runtime: FilesRuntime | None = None
        self.connection: AbstractRobustConnection | None = None
        self.rotator: Rotator | None = None
        self._mesh: MeshContext | None = None

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self._mesh = mesh
        http = mesh.settings.http
        self.runtime = FilesRuntime(
            settings=self.settings,
            sessions=mesh.sessions,
            storage=self.storage,
            bus=FilesBus(mesh.broker),
            schedule=RotationSchedule(self.settings.refer_interval, self.settings.refer_lifetime),
            public_url=self.settings.public_url or f"http://{http.host}:{http.port}",
            metrics=FilesMetrics(mesh.metrics.registry),
            limiter=DownloadLimiter(self.settings.max_downloaders),
        )
        IntakeRoutes(self.runtime).add_to(app)
        AnalysisRoutes(self.runtime).add_to(app)
        app.on_shutdown.append(self._closing)

    async def _closing(self, _app: web.Application) -> None:
        # Before aiohttp waits for running handlers: SSE streams end instead of holding it.
        assert self.runtime is not None
        self.runtime.closing.set()

    async def start(self) -> None:
        assert self._mesh is not None
        assert self.runtime is not None
        rt = self.runtime
        self.connection = await aio_pika.connect_robust(self._mesh.settings.amqp.url)
        channel = await self.connection.channel()
        # The chain's target: durable, and what can never be renewed goes to workmesh.dead.
        await channel.declare_queue(
            ROTATE_QUEUE, durable=True, arguments={"x-dead-letter-exchange": DEAD_EXCHANGE}
        )
        # Each key event waits out one interval in the Delays queue, then renews that key.
        delay_queue = await rt.bus.delays.declare(ROTATE_QUEUE, self.settings.refer_interval)
        waiting = await channel.declare_queue(delay_queue, passive=True)
        for key in CHAIN_KEYS:
            await waiting.bind(EVENTS_EXCHANGE, routing_key=key)
        await channel.close()
        rt.notifier = Notifier(self.connection)
        await rt.notifier.start()
        self.rotator = Rotator(
            self.connection,
            rt.sessions,
            rt.schedule,
            lambda: rt.public_url,
            self.settings.rotation_batch,
            self.settings.rotation_linger,
            rt.metrics.lateness,
            rt.metrics.renewals,
            rt.metrics.batch_size,
        )
        await self.rotator.start()
        await self._mend_broken_chains()
        rt.chain_ready.set()

    async def _mend_broken_chains(self) -> None:
        """A chain whose next message never got published (the process died between the
        commit and the publish) would stop renewing silently. At start, every renewal overdue
        by more than an interval gets its message again; should the old one still be on its
        way, only one of the two can match the generation."""
        assert self.runtime is not None
        rt = self.runtime
        overdue = utcnow() - timedelta(seconds=self.settings.refer_interval)
        async with rt.sessions() as session:
            rows = await session.execute(
                select(StoredFile.id, StoredFile.refer_generation, StoredFile.refer_next_at).where(
                    StoredFile.refer_stopped.is_(None),
                    StoredFile.refer_next_at.is_not(None),
                    StoredFile.refer_next_at < overdue,
                )
            )
            stale = [
                RotationDue(file_id=i, generation=g, due_at=at)
                for i, g, at in rows
                if at is not None
            ]
        for due in stale:
            await rt.bus.broker.publish(
                due.model_dump_json().encode(),
                routing_key=ROTATE_QUEUE,
                persist=True,
                content_type="application/json",
            )
        if stale:
            log.warning("re-sent %d overdue refer renewals", len(stale))

    async def stop(self) -> None:
        if self.rotator is not None:
            await self.rotator.stop()
        if self.connection is not None:
            await self.connection.close()
