"""The stock pusher: one round takes pending push items for a marketplace, sends the newest
value of each in full batches within the marketplace's limits, and records what came back.

A round is a pipeline (``_Round``): the next batches are planned while requests are in flight
and answers are recorded together, so the database work between requests does not hold the
request rate below what the marketplace allows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, and_, bindparam, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clients.marketplaces.base import (
    MalformedResponse,
    MarketplaceUnavailable,
    PushOutcome,
    Refused,
)
from clients.marketplaces.ozon import OzonStock
from clients.marketplaces.wildberries import WbStock
from clients.marketplaces.yandex import YmStock
from models.base import utcnow
from models.stock import StockProduct, StockPushItem
from schemas.stock import Marketplace
from workmesh.bulk import BulkStatement
from workmesh.stock import cache
from workmesh.stock.batches import plan_batches
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.metrics import StockMetrics
from workmesh.stock.service import report_problem
from workmesh.stock.settings import StockSettings

log = logging.getLogger(__name__)


class RoundEnd(StrEnum):
    IDLE = "idle"  # nothing pending: the next round after ``push_idle``
    BUSY = "busy"  # the round's time was up with work left: the next round at once
    DOWN = "down"  # the marketplace stayed down through every retry: after ``push_backoff``


class Pending(NamedTuple):
    """One push item as sent: its value and version, and the marketplace's ids for it.
    (A tuple: a round makes one per item, 100,000s of them.)"""

    sku: str
    target: int
    version: int
    # The marketplace's key (Ozon offer_id, Wildberries chrtId, Yandex shop SKU) and where it
    # goes (Ozon or Wildberries warehouse, Yandex campaign); None when the product lost them.
    item: str | int | None
    place: int | None
    # Ozon's product_id: the product's own, else the one Ozon told us (the cache).
    product_id: int | None = None


Outcomes = list[tuple[list[Pending], PushOutcome]]

# Per marketplace: the product columns holding its item key and its warehouse or campaign.
_IDS = {
    Marketplace.OZON: (StockProduct.ozon_offer_id, StockProduct.ozon_warehouse_id),
    Marketplace.WILDBERRIES: (StockProduct.wb_chrt_id, StockProduct.wb_warehouse_id),
    Marketplace.YANDEX: (StockProduct.ym_shop_sku, StockProduct.ym_campaign_id),
}


# What an answer writes, item by item (one executemany each; see workmesh/bulk.py). Keyed
# row by row: the same UPDATE as a set, keyed on (sku, version) pairs, measured three times
# slower on SQLite. An item whose stock changed while it was in flight stays pending.
_items = cast(Table, StockPushItem.__table__)
_item = and_(_items.c.marketplace == bindparam("b_marketplace"), _items.c.sku == bindparam("b_sku"))
_still_pending = case((_items.c.version == bindparam("b_version"), False), else_=_items.c.pending)
_RECORD_ACCEPTED = BulkStatement(
    update(_items)
    .where(_item)
    .values(
        pushed_value=bindparam("b_value"),
        pushed_version=bindparam("b_version"),
        pushed_at=bindparam("b_at"),
        error=None,
        error_at=None,
        pending=_still_pending,
    )
)
_RECORD_REFUSED = BulkStatement(
    update(_items)
    .where(_item)
    .values(
        error=bindparam("b_error"),
        error_at=bindparam("b_at"),
        pushed_at=bindparam("b_at"),
        # Not retried until the stock changes again: the same value would be refused the
        # same way.
        pending=_still_pending,
    )
)
# Sent but not taken: counts as sent for Ozon's once-per-interval rule.
_RECORD_LATER = BulkStatement(update(_items).where(_item).values(pushed_at=bindparam("b_at")))


class Pusher:
    def __init__(
        self,
        settings: StockSettings,
        sessions: async_sessionmaker[AsyncSession],
        metrics: StockMetrics,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics
        self.clients: Marketplaces | None = None  # set by the capability at start

    def shape(self, marketplace: Marketplace) -> tuple[int, int]:
        """(items a request, requests at once) for the marketplace."""
        s = self.settings
        return {
            Marketplace.OZON: (s.ozon_batch, s.ozon_parallel),
            Marketplace.WILDBERRIES: (s.wb_batch, s.wb_parallel),
            Marketplace.YANDEX: (s.ym_batch, s.ym_parallel),
        }[marketplace]

    async def run_round(
        self, marketplace: Marketplace, stopping: Callable[[], bool] = lambda: False
    ) -> RoundEnd:
        """Push pending items until none is left, the round's time is up, or the marketplace
        is down. Planning the next batches, the requests and recording the answers overlap."""
        return await _Round(self, marketplace, stopping).run()

    async def plan(
        self, marketplace: Marketplace, busy: Collection[str], most: int, after: str = ""
    ) -> tuple[list[list[Pending]], str | None]:
        """Up to ``most`` full batches of the pending items past SKU ``after``, leaving out the
        ``busy`` ones (in flight or waiting to be recorded), and the SKU to go on from (None
        when the scan reached the end)."""
        # Busy as of now: an item recorded while the query runs was read before its record
        # committed, as still pending; leaving it out keeps it from being sent twice.
        busy = frozenset(busy)
        size, _ = self.shape(marketplace)
        item, place = _IDS[marketplace]
        # The page of pending items first, then their products: limited before the join, the
        # page is a range of the (marketplace, pending, sku) index whatever the statistics say.
        # Joined first, PostgreSQL with statistics from before a mass change (100,000 items
        # turned pending) joined and sorted every pending item: 80 ms a query, not 13.
        page = (
            select(StockPushItem.sku, StockPushItem.target, StockPushItem.version)
            .where(
                StockPushItem.marketplace == marketplace.value,
                StockPushItem.pending,
                StockPushItem.sku > after,
            )
            # Read in the index's order: no sort, and a round goes on past what it planned
            # instead of reading it again.
            .order_by(StockPushItem.sku)
            .limit(size * most)
        )
        if marketplace is Marketplace.OZON:
            # Ozon takes each item at most once per interval: wait out the ones sent lately.
            quiet_since = utcnow() - timedelta(seconds=self.settings.ozon_item_interval)
            page = page.where(
                or_(StockPushItem.pushed_at.is_(None), StockPushItem.pushed_at <= quiet_since)
            )
        pending_page = page.subquery()
        query = (
            select(
                pending_page.c.sku,
                pending_page.c.target,
                pending_page.c.version,
                item,
                place,
                StockProduct.ozon_product_id,
            )
            # Outer: every row of the page comes back, so a full page means more may follow
            # (an item without its product has no ids and is settled as lost, below).
            .join(StockProduct, StockProduct.sku == pending_page.c.sku, isouter=True)
            .order_by(pending_page.c.sku)
        )
        async with self.sessions() as session:
            read = (await session.execute(query)).all()
            more = read[-1][0] if len(read) == size * most else None
            rows = [r for r in read if r[0] not in busy]
            ozon = marketplace is Marketplace.OZON
            known: dict[str, Any] = {}
            if ozon:
                offers = {str(r[3]) for r in rows if r[5] is None and r[3] is not None}
                known = await cache.lookup(session, cache.OZON_PRODUCT_ID, offers)
        pending = [
            Pending(sku, target, version, key, where,
                    (product_id or _int(known.get(str(key)))) if ozon else None)
            for sku, target, version, key, where, product_id in rows
        ]  # fmt: skip
        lost = [p for p in pending if p.item is None or p.place is None]
        if lost:
            # The product no longer has this marketplace's ids: nothing to send it as.
            why = f"the product has no {marketplace.value} ids any more"
            await self.record(marketplace, [(lost, PushOutcome(refused=dict.fromkeys(
                (p.sku for p in lost), why)))])  # fmt: skip
        ready = [p for p in pending if p.item is not None and p.place is not None]
        # Wildberries takes one warehouse per request, Yandex one campaign.
        by_place = marketplace is not Marketplace.OZON
        return plan_batches(ready, size, lambda p: p.place if by_place else None, most), more

    async def push(self, marketplace: Marketplace, batch: list[Pending]) -> PushOutcome | None:
        """Send one batch; None when the marketplace is down or its answer is unreadable."""
        try:
            outcome = await self._send(marketplace, batch)
        except MarketplaceUnavailable as error:
            log.warning("%s is unavailable: %s", marketplace, error)
            self.metrics.push_requests.labels(marketplace.value, "unavailable").inc()
            return None
        except MalformedResponse as error:
            # We cannot tell what it applied: the items stay pending, the problem is shown.
            async with self.sessions() as session, session.begin():
                await report_problem(session, marketplace.value, "push", str(error))
            self.metrics.problems.labels(marketplace.value, "push").inc()
            return None
        for name, count in (
            ("accepted", len(outcome.accepted)),
            ("refused", len(outcome.refused)),
            ("later", len(outcome.later)),
        ):
            if count:
                self.metrics.pushed_items.labels(marketplace.value, name).inc(count)
        return outcome

    async def _send(self, marketplace: Marketplace, batch: Sequence[Pending]) -> PushOutcome:
        """One request; a request refused as a whole is split until the bad items stand alone."""
        try:
            outcome = await self._request(marketplace, batch)
        except Refused as error:
            self.metrics.push_requests.labels(marketplace.value, str(error.status)).inc()
            if len(batch) == 1:
                return PushOutcome(refused={batch[0].sku: str(error)})
            half = len(batch) // 2
            outcome = await self._send(marketplace, batch[:half])
            outcome.merge(await self._send(marketplace, batch[half:]))
            return outcome
        self.metrics.push_requests.labels(marketplace.value, "ok").inc()
        return outcome

    async def _request(self, marketplace: Marketplace, batch: Sequence[Pending]) -> PushOutcome:
        clients = self.clients
        assert clients is not None, "the pusher runs only after the capability started"
        place = int(batch[0].place or 0)
        if marketplace is Marketplace.OZON:
            return await clients.ozon.push_stocks(
                [
                    OzonStock(p.sku, str(p.item), p.product_id, int(p.place or 0), p.target)
                    for p in batch
                ]
            )
        if marketplace is Marketplace.WILDBERRIES:
            return await clients.wildberries.push_stocks(
                place, [WbStock(p.sku, int(p.item or 0), place, p.target) for p in batch]
            )
        return await clients.yandex.push_stocks(
            place, [YmStock(p.sku, str(p.item), place, p.target) for p in batch]
        )

    async def record(self, marketplace: Marketplace, outcomes: Outcomes) -> None:
        """Write what the marketplace made of some batches, in one transaction. An item whose
        stock changed while it was in flight stays pending: its newer value goes later."""
        sent = {p.sku: p for batch, _ in outcomes for p in batch}
        outcome = PushOutcome()
        for _, part in outcomes:
            outcome.merge(part)
        learned = {
            str(sent[sku].item): product_id
            for sku, product_id in outcome.ids.items()
            if sku in sent and sent[sku].product_id != product_id
        }
        shared = {"b_marketplace": marketplace.value, "b_at": utcnow()}
        accepted = [
            {"b_sku": s, "b_version": sent[s].version, "b_value": sent[s].target}
            for s in outcome.accepted
            if s in sent
        ]
        refused = [
            {"b_sku": s, "b_version": sent[s].version, "b_error": why[:2000]}
            for s, why in outcome.refused.items()
            if s in sent
        ]
        later = [{"b_sku": s} for s in outcome.later if s in sent]
        async with self.sessions() as session, session.begin():
            await _RECORD_ACCEPTED.execute(session, accepted, shared)
            await _RECORD_REFUSED.execute(session, refused, shared)
            await _RECORD_LATER.execute(session, later, shared)
            if learned and marketplace is Marketplace.OZON:
                await cache.remember(session, cache.OZON_PRODUCT_ID, learned)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Round:
    """One push round as a pipeline: a planner keeps the next batches ready while up to
    ``parallel`` workers have requests in flight, and a recorder writes the answers that
    came back meanwhile in one transaction. Items planned and not yet recorded are *busy*,
    so no item is in two requests at once."""

    def __init__(
        self, pusher: Pusher, marketplace: Marketplace, stopping: Callable[[], bool]
    ) -> None:
        self.pusher, self.marketplace, self.stopping = pusher, marketplace, stopping
        self.parallel = pusher.shape(marketplace)[1]
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + pusher.settings.push_round
        self.busy: set[str] = set()
        self.batches: asyncio.Queue[list[Pending] | None] = asyncio.Queue(self.parallel)
        self.answers: asyncio.Queue[tuple[list[Pending], PushOutcome] | None] = asyncio.Queue()
        self.recorded = asyncio.Event()  # set after every commit of the recorder
        self.records = 0
        self.idle = self.down = False
        self.failed: BaseException | None = None

    def going(self) -> bool:
        return not (
            self.down or self.failed or self.stopping() or self.loop.time() >= self.deadline
        )

    async def run(self) -> RoundEnd:
        # One worker more than the marketplace takes at once: its request is built and waits
        # at the client's limiter, so it goes the moment an answer frees a slot instead of
        # after the body of 2,000 items is made.
        workers = [asyncio.create_task(self.worker()) for _ in range(self.parallel + 1)]
        recorder = asyncio.create_task(self.recorder())
        try:
            await self.planner()
            for _ in workers:
                await self.batches.put(None)
            await asyncio.gather(*workers)
            await self.answers.put(None)
            await recorder
        finally:
            tasks = (*workers, recorder)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.failed is not None:
            raise self.failed
        if self.down:
            return RoundEnd.DOWN
        return RoundEnd.IDLE if self.idle else RoundEnd.BUSY

    async def planner(self) -> None:
        # Passes over the pending items in SKU order, a page per query. Items read but left
        # out of the batches (a small warehouse's rest) wait for the next pass, with whatever
        # joins them meanwhile.
        after, found, seen = "", False, self.records
        while self.going():
            batches, more = await self.pusher.plan(
                self.marketplace, self.busy, self.parallel, after
            )
            for batch in batches:
                self.busy.update(p.sku for p in batch)
                await self.batches.put(batch)
            found = found or bool(batches)
            if more is not None:
                after = more
                continue
            # The end of a pass. One that found nothing, with no answer recorded since it
            # began, ends the round unless something is in flight: that may come back
            # pending (not taken, or changed meanwhile), so wait for it.
            if not found and self.records == seen:
                if not self.busy:
                    self.idle = True
                    return
                while self.records == seen and not (self.down or self.failed):
                    self.recorded.clear()
                    await self.recorded.wait()
            after, found, seen = "", False, self.records

    async def worker(self) -> None:
        while (batch := await self.batches.get()) is not None:
            outcome = None
            if self.going():
                try:
                    outcome = await self.pusher.push(self.marketplace, batch)
                except Exception:
                    log.exception("%s: push failed", self.marketplace)
                self.down = self.down or outcome is None
            if outcome is None:  # not sent: the items stay pending for a later round
                self.busy.difference_update(p.sku for p in batch)
                self.recorded.set()
            else:
                await self.answers.put((batch, outcome))

    async def recorder(self) -> None:
        done = False
        while not done:
            answers = [await self.answers.get()]
            while not self.answers.empty():
                answers.append(self.answers.get_nowait())
            done = None in answers
            outcomes = [a for a in answers if a is not None]
            if not outcomes:
                continue
            try:
                await self.pusher.record(self.marketplace, outcomes)
            except Exception as error:
                self.failed = error
                self.recorded.set()
                return
            for batch, _ in outcomes:
                self.busy.difference_update(p.sku for p in batch)
            self.records += 1
            self.recorded.set()
