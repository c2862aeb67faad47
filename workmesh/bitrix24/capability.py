"""The ``bitrix24`` capability: reception events in, Bitrix24 contacts, deals and comments out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from faststream.rabbit import RabbitBroker
from faststream.rabbit.message import RabbitMessage
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from brokers.errors import Unprocessable
from clients.bitrix24 import (
    Bitrix24Client,
    CommandPacker,
    LeakyBucket,
    OperatingBudget,
    RetryPolicy,
)
from handlers.bitrix24 import (
    RECEPTION_KEY,
    RECEPTIONS_QUEUE,
    build_bitrix24_router,
    receptions_queue,
)
from rabbitmq.topology import EVENTS_EXCHANGE
from schemas.receptions import Reception
from workmesh.bitrix24.batch import BatchSync, Result
from workmesh.bitrix24.metrics import SyncMetrics
from workmesh.bitrix24.orchestrator import ReceptionSync, SyncStopped
from workmesh.bitrix24.planning import DealSettings
from workmesh.bitrix24.settings import Bitrix24Settings
from workmesh.capabilities import MeshContext
from workmesh.delays import Delays

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-workmesh-attempt"


class Bitrix24Capability:
    name = "bitrix24"

    def __init__(self, settings: Bitrix24Settings | None = None) -> None:
        self.settings = settings or Bitrix24Settings()
        # A seam for tests: runs after a record's sync is committed, before its ack; raising
        # here is a process dying between the two.
        self.before_ack: Callable[[Reception], Awaitable[None]] | None = None
        self.sync: ReceptionSync | None = None
        self.client: Bitrix24Client | None = None
        self._ready = asyncio.Event()
        self._broker: RabbitBroker | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._metrics: SyncMetrics | None = None
        self._http: aiohttp.ClientSession | None = None
        self._packer: CommandPacker | None = None
        self._delays: Delays | None = None

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self._broker, self._sessions = mesh.broker, mesh.sessions
        self._metrics = SyncMetrics(mesh.metrics.registry)
        if not self.settings.configured:
            # Info, not a warning: a mesh without a portal is a normal set-up.
            log.info(
                "Bitrix24 is not configured (WORKMESH_BITRIX24_WEBHOOK_URL): reception events "
                "wait in %s",
                RECEPTIONS_QUEUE,
            )
            return
        mesh.broker.include_router(build_bitrix24_router(self._handle, self.settings.prefetch))

    async def start(self) -> None:
        assert self._broker is not None
        assert self._sessions is not None
        assert self._metrics is not None
        self._delays = Delays(self._broker)
        if not self.settings.configured:
            # Nobody consumes, but the events must still be kept for when someone does.
            queue = await self._broker.declare_queue(receptions_queue())
            await queue.bind(EVENTS_EXCHANGE, routing_key=RECEPTION_KEY)
            return
        s = self.settings
        self._http = aiohttp.ClientSession()
        self.client = Bitrix24Client(
            self._http,
            s.endpoint(),
            bucket=LeakyBucket(s.bucket_capacity - s.bucket_margin, s.bucket_drain),
            budget=OperatingBudget(
                s.operating_limit, margin=s.operating_margin, blocked_pause=s.operating_pause
            ),
            retry=RetryPolicy(tuple(s.retry_waits)),
            observer=self._metrics,
            timeout=s.request_timeout,
        )
        self._packer = CommandPacker(self.client, in_flight=s.requests_in_flight)
        self._packer.start()
        batches = BatchSync(
            self._packer,
            self._sessions,
            DealSettings(s.ident_field, s.stages),
            self._metrics,
        )
        self.sync = ReceptionSync(
            batches,
            self._metrics,
            batch_size=s.batch_size,
            flush_timeout=s.flush_timeout,
            batches_in_flight=s.batches_in_flight,
        )
        self._ready.set()

    async def stop(self) -> None:
        if self.sync is not None:
            await self.sync.stop()
        if self._packer is not None:
            await self._packer.stop()
        if self._http is not None:
            await self._http.close()

    async def _handle(self, reception: Reception, message: RabbitMessage) -> None:
        # The broker starts consuming before ``start`` has built the sync.
        await self._ready.wait()
        assert self.sync is not None
        try:
            outcome = await self.sync.submit(reception)
        except SyncStopped:
            # Shutting down: back to the queue, for this process's successor.
            await message.nack(requeue=True)
            return
        if outcome.result is Result.DEAD:
            raise Unprocessable(outcome.reason)
        if outcome.result is Result.RETRY:
            await self._retry_later(message, outcome.reason)
        if self.before_ack is not None:
            await self.before_ack(reception)

    async def _retry_later(self, message: RabbitMessage, reason: str) -> None:
        assert self._delays is not None
        attempt = _attempt(message) + 1
        if attempt > self.settings.max_attempts:
            raise Unprocessable(f"gave up after {attempt - 1} attempts: {reason}")
        log.info(
            "reception back in %.0f s (attempt %d): %s", self.settings.retry_delay, attempt, reason
        )
        await self._delays.publish_later(
            message.body,
            queue=RECEPTIONS_QUEUE,
            delay=self.settings.retry_delay,
            headers={ATTEMPT_HEADER: attempt},
            content_type="application/json",
        )


def _attempt(message: RabbitMessage) -> int:
    try:
        return int(message.headers.get(ATTEMPT_HEADER, 1))
    except (TypeError, ValueError):
        return 1
