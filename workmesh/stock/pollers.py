"""Marketplace pollers: read one feed (orders or returns) of one marketplace over a time window
and turn what it says into ``stock.marketplace.<kind>`` events.

Each poll reads ``[cursor - overlap, now]``: marketplaces publish changes late and our clocks
differ from theirs, so consecutive windows overlap and an order may be seen twice; the ledger
counts it once (order lines only move forward, returns are keyed by their id). The cursor moves
to ``now`` only after a poll read its whole window and published what it found, so a failed
poll (marketplace down, a body we cannot read) loses nothing: the next one reads it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clients.marketplaces.feeds import FeedPage
from clients.marketplaces.wildberries import OpenOrder
from models.stock import StockOrderLine, StockProduct
from schemas.stock import Marketplace
from workmesh.stock.ledger import LineState
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.settings import StockSettings

FEEDS = ("orders", "returns")


@dataclass(frozen=True)
class PollWindow:
    since: datetime
    until: datetime


def poll_window(cursor: datetime | None, now: datetime, settings: StockSettings) -> PollWindow:
    """The window the next poll reads: back to the cursor minus the overlap (or the initial
    look-back when the feed was never read), up to now."""
    # The marketplaces take times in whole milliseconds: the window ends on one, so the cursor
    # is exactly the end the marketplace was asked about.
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    start = cursor or now - timedelta(seconds=settings.poll_initial_lookback)
    return PollWindow(min(now, start - timedelta(seconds=settings.poll_overlap)), now)


class Pollers:
    """Reads the feeds; publishing the events and moving the cursor are the caller's."""

    def __init__(self, settings: StockSettings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.clients: Marketplaces | None = None  # set by the capability at start

    async def read(self, marketplace: Marketplace, feed: str, window: PollWindow) -> FeedPage:
        """Everything the feed says in the window. Raises ``MarketplaceUnavailable`` when the
        marketplace stayed down and ``MalformedResponse`` when an answer as a whole is
        unreadable; an entry it cannot read is a problem in the page, the rest still counts."""
        clients = self.clients
        assert clients is not None, "the pollers run only after the capability started"
        since, until = window.since, window.until
        if marketplace is Marketplace.OZON:
            if feed == "orders":
                return await clients.ozon.postings(since, until)
            return await clients.ozon.returns(since, until)
        if marketplace is Marketplace.WILDBERRIES:
            if feed == "returns":
                return await clients.wildberries.returns(since, until)
            page = await clients.wildberries.orders(since, until)
            # Wildberries lists new assembly tasks only; cancellations are found by asking
            # for the status of the orders we counted as sold.
            cancelled = await clients.wildberries.cancellations(await self._open_wb_orders())
            page.events += cancelled.events
            page.problems += cancelled.problems
            return page
        page = FeedPage()
        for campaign in await self._campaigns():
            read = clients.yandex.orders if feed == "orders" else clients.yandex.returns
            part = await read(campaign, since, until)
            page.events += part.events
            page.problems += part.problems
        return page

    async def _open_wb_orders(self) -> list[OpenOrder]:
        """The newest Wildberries orders still counted as sold (one status request's worth)."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(StockOrderLine.order_id, StockOrderLine.ref)
                .where(
                    StockOrderLine.marketplace == Marketplace.WILDBERRIES.value,
                    StockOrderLine.state == LineState.ORDERED.value,
                    StockOrderLine.ref.is_not(None),
                )
                .order_by(StockOrderLine.updated_at.desc())
                .limit(self.settings.wb_status_batch)
            )
            found = {rid: ref for rid, ref in rows if ref is not None and ref.isdigit()}
        return [OpenOrder(rid=rid, id=int(ref)) for rid, ref in found.items()]

    async def _campaigns(self) -> list[int]:
        """Yandex campaigns some product is sold in: each has its own orders and returns."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(StockProduct.ym_campaign_id)
                .where(StockProduct.ym_campaign_id.is_not(None))
                .distinct()
            )
            return sorted(c for (c,) in rows if c is not None)
