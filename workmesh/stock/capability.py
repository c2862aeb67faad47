"""The ``stock`` capability: the scheduled marketplace polls, the stock ledger consumer, the
scheduled pusher rounds, and the product and stock HTTP API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, cast

from aiohttp import web
from faststream.rabbit import ExchangeType, RabbitExchange, RabbitMessage, RabbitQueue

from clients.marketplaces.base import MalformedResponse, MarketplaceUnavailable
from clients.marketplaces.feeds import FeedPage
from models.base import utcnow
from rabbitmq.topology import DEAD_EXCHANGE, EVENTS_EXCHANGE
from schemas.stock import Marketplace, MarketplaceEvent, PollRequest, PushRound
from workmesh.capabilities import MeshContext
from workmesh.delays import Delays
from workmesh.stock import api, schedules
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.metrics import StockMetrics
from workmesh.stock.pollers import FEEDS, Pollers, PollWindow, poll_window
from workmesh.stock.pusher import Pusher, RoundEnd
from workmesh.stock.service import apply_event, changed, report_problem
from workmesh.stock.settings import StockSettings

if TYPE_CHECKING:
    from faststream.rabbit.schemas.queue import ClassicQueueArgs

log = logging.getLogger(__name__)

EVENTS = RabbitExchange(EVENTS_EXCHANGE, type=ExchangeType.TOPIC, durable=True, declare=False)
LEDGER_QUEUE = "workmesh.stock.ledger"
PUSH_QUEUE_PREFIX = "workmesh.stock.push."
POLL_QUEUE_PREFIX = "workmesh.stock.poll."
_ARGS = cast("ClassicQueueArgs", {"x-dead-letter-exchange": DEAD_EXCHANGE})


class StockCapability:
    name = "stock"

    def __init__(self, settings: StockSettings | None = None) -> None:
        self.settings = settings or StockSettings()
        self.marketplaces = tuple(Marketplace(m) for m in self.settings.marketplaces)
        self._mesh: MeshContext | None = None
        self._pusher: Pusher | None = None
        self._pollers: Pollers | None = None
        self._metrics: StockMetrics | None = None
        self._delays: Delays | None = None
        self._stopping = False
        self._rounds = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def attach(self, mesh: MeshContext, app: web.Application) -> None:
        self._mesh = mesh
        metrics = self._metrics = StockMetrics(mesh.metrics.registry)
        self._pusher = Pusher(self.settings, mesh.sessions, metrics)
        self._pollers = Pollers(self.settings, mesh.sessions)
        broker = mesh.broker

        @broker.subscriber(
            RabbitQueue(LEDGER_QUEUE, durable=True, routing_key="stock.marketplace.*",
                        arguments=_ARGS),
            exchange=EVENTS,
        )  # fmt: skip
        async def on_marketplace_event(body: MarketplaceEvent, message: RabbitMessage) -> None:
            async with mesh.sessions() as session, session.begin():
                moved, touched = await apply_event(session, body, self.marketplaces)
                # A redelivery may follow a commit whose events were never published.
                news = [
                    changed(p, body.kind.value)
                    for p in (touched if message.raw_message.redelivered else moved)
                ]
            for event in news:
                await broker.publish(
                    event, exchange=EVENTS, routing_key="stock.changed", persist=True
                )

        for marketplace in self.marketplaces:
            self._attach_poller(mesh, marketplace)
            self._attach_pusher(mesh, marketplace)
        api.add_routes(app, mesh.sessions, broker, self.marketplaces)

    def _attach_poller(self, mesh: MeshContext, marketplace: Marketplace) -> None:
        queue = POLL_QUEUE_PREFIX + marketplace.value

        @mesh.broker.subscriber(RabbitQueue(queue, durable=True, arguments=_ARGS))
        async def on_poll(body: PollRequest) -> None:
            name = schedules.poll_name(body.marketplace.value, body.feed)
            async with mesh.sessions() as session:
                row = await schedules.is_live(session, name, body.chain)
                if row is None:
                    return  # a message of an older chain
                window = poll_window(row.cursor, utcnow(), self.settings)
            async with self._busy():
                page, error = await self._read_feed(body, window)
                for event in page.events:
                    await mesh.broker.publish(
                        event,
                        exchange=EVENTS,
                        routing_key=f"stock.marketplace.{event.kind.value}",
                        persist=True,
                    )
                token = schedules.new_token()
                # The cursor moves only once the whole window was read and its events are
                # out: a poll that failed reads the same window (and more) next time.
                async with mesh.sessions() as session, session.begin():
                    for problem in page.problems:
                        await report_problem(session, body.marketplace.value, body.feed, problem)
                    await schedules.renew(
                        session,
                        name,
                        token,
                        cursor=window.until if error is None else None,
                        error=error,
                    )
            if self._stopping:
                return
            await self._schedule(
                POLL_QUEUE_PREFIX + body.marketplace.value,
                PollRequest(marketplace=body.marketplace, feed=body.feed, chain=token),
                self.settings.poll_interval,
            )

    async def _read_feed(
        self, body: PollRequest, window: PollWindow
    ) -> tuple[FeedPage, str | None]:
        """The feed's page and the reason the poll failed (None when it read everything)."""
        assert self._pollers is not None
        assert self._metrics is not None
        marketplace, feed, metrics = body.marketplace.value, body.feed, self._metrics
        try:
            page = await self._pollers.read(body.marketplace, body.feed, window)
        except MarketplaceUnavailable as error:
            log.warning("poll %s %s: %s", marketplace, feed, error)
            metrics.polls.labels(marketplace, feed, "unavailable").inc()
            return FeedPage(), str(error)
        except MalformedResponse as error:
            # Reported and shown; polling goes on and the next poll reads the window again.
            log.warning("poll %s %s: %s", marketplace, feed, error)
            metrics.polls.labels(marketplace, feed, "malformed").inc()
            metrics.problems.labels(marketplace, feed).inc()
            return FeedPage(problems=[f"{feed} poll: {error}"]), str(error)
        except Exception as error:
            # Anything else (a body shape nobody foresaw, a bug) fails this poll, not the
            # schedule: raised, it would dead-letter or requeue the schedule's only message.
            log.exception("poll %s %s failed", marketplace, feed)
            metrics.polls.labels(marketplace, feed, "failed").inc()
            reason = f"{feed} poll failed: {type(error).__name__}: {error}"
            return FeedPage(problems=[reason]), reason
        metrics.polls.labels(marketplace, feed, "ok").inc()
        for event in page.events:
            metrics.events.labels(marketplace, event.kind.value).inc()
        if page.problems:
            metrics.problems.labels(marketplace, feed).inc(len(page.problems))
        return page, None

    def _attach_pusher(self, mesh: MeshContext, marketplace: Marketplace) -> None:
        queue = PUSH_QUEUE_PREFIX + marketplace.value

        @mesh.broker.subscriber(RabbitQueue(queue, durable=True, arguments=_ARGS))
        async def on_push_round(body: PushRound) -> None:
            name = schedules.push_name(body.marketplace.value)
            async with mesh.sessions() as session:
                if await schedules.is_live(session, name, body.chain) is None:
                    return  # a message of an older chain
            assert self._pusher is not None
            async with self._busy():
                end = await self._pusher.run_round(body.marketplace, lambda: self._stopping)
            if self._stopping:
                return
            token = schedules.new_token()
            delay = {RoundEnd.IDLE: self.settings.push_idle,
                     RoundEnd.DOWN: self.settings.push_backoff}.get(end)  # fmt: skip
            # The token is committed before its message exists, or the message could arrive
            # first and be taken for a stale one. A crash between the two ends the chain;
            # the next start of the capability begins a new one.
            async with mesh.sessions() as session, session.begin():
                await schedules.renew(
                    session, name, token, error="unavailable" if end is RoundEnd.DOWN else None
                )
            await self._schedule(queue, PushRound(marketplace=body.marketplace, chain=token), delay)

    @asynccontextmanager
    async def _busy(self) -> AsyncIterator[None]:
        """A poll or push round in progress: ``stop`` waits for it to end."""
        self._rounds += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._rounds -= 1
            if not self._rounds:
                self._idle.set()

    async def _schedule(
        self, queue: str, body: PushRound | PollRequest, delay: float | None
    ) -> None:
        assert self._mesh is not None
        assert self._delays is not None
        if delay is None:
            await self._mesh.broker.publish(body, queue=queue, persist=True)
        else:
            await self._delays.publish_later(body, queue=queue, delay=delay)

    async def start(self) -> None:
        assert self._mesh is not None
        assert self._pusher is not None
        self._delays = Delays(self._mesh.broker)
        assert self._pollers is not None
        self._pusher.clients = self._pollers.clients = Marketplaces.build(self.settings)
        for marketplace in self.marketplaces:
            for feed in FEEDS:
                token = schedules.new_token()
                async with self._mesh.sessions() as session, session.begin():
                    name = schedules.poll_name(marketplace.value, feed)
                    await schedules.take_over(session, name, token)
                await self._schedule(
                    POLL_QUEUE_PREFIX + marketplace.value,
                    PollRequest(marketplace=marketplace, feed=feed, chain=token),
                    None,
                )
            token = schedules.new_token()
            queue = PUSH_QUEUE_PREFIX + marketplace.value
            async with self._mesh.sessions() as session, session.begin():
                await schedules.take_over(session, schedules.push_name(marketplace.value), token)
            await self._schedule(queue, PushRound(marketplace=marketplace, chain=token), None)

    async def stop(self) -> None:
        # Rounds and polls in flight see the flag and end after their current requests; their
        # message is acknowledged without a successor, and the next start begins a new chain.
        self._stopping = True
        with suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.settings.http_timeout)
        if self._pusher is not None and self._pusher.clients is not None:
            await self._pusher.clients.close()
