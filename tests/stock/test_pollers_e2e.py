"""The scheduled pollers through the real RabbitMQ: orders and returns placed on the fake
marketplaces move stock, and the new value reaches all three; an order seen by overlapping
polls counts once; a marketplace down for a while gets the latest stock once back; bad data
from a poll is reported and polling goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select

from clients.marketplaces.feeds import FeedPage
from models.stock import StockSchedule
from schemas.stock import Marketplace
from tests.conftest import Harness, eventually
from tests.stock.fakes import FakeMarketplaces, settings_for
from workmesh.db import create_engine, session_factory
from workmesh.settings import DatabaseSettings
from workmesh.stock.capability import StockCapability
from workmesh.stock.pollers import Pollers, PollWindow

PRODUCT = {
    "on_hand": 10,
    "ozon_offer_id": "mug-oz",
    "ozon_warehouse_id": 1,
    "wb_chrt_id": 77,
    "wb_warehouse_id": 2,
    "ym_shop_sku": "mug-ym",
    "ym_campaign_id": 3,
}


@asynccontextmanager
async def running(harness: Harness, **overrides: Any) -> AsyncIterator[FakeMarketplaces]:
    """The stock capability polling and pushing to fresh fakes, with a product ``mug`` of 10
    already shown by all three."""
    # Polls every 0.2 s would spend Ozon's and Wildberries' per-minute budgets in seconds:
    # the minutes are scaled to a second here (and in the fakes, which enforce them).
    fake = FakeMarketplaces(ozon_item_interval=0.2, ozon_window=1.0, wb_window=1.0)
    async with TestServer(fake.app) as server:
        base = str(server.make_url("")).rstrip("/")
        settings = settings_for(
            base, ozon_item_interval=0.2,
            ozon_window=1.0, wb_window=1.0,
            poll_interval=0.2, poll_overlap=30.0, push_idle=0.1, push_round=1.0,
            push_backoff=0.3, http_attempts=2, http_max_wait=0.1,
            **overrides,
        )  # fmt: skip
        await harness.start("stock", capabilities=[StockCapability(settings)])
        status, body = await harness.api("PUT", "/api/v1/stock/products/mug", json=PRODUCT)
        assert status == 201, body
        await settled(shows(fake, 10), message="the first stock on all three")
        try:
            yield fake
        finally:
            # Stop the mesh while the fakes still answer, so no poll waits on a dead server.
            for mesh in harness.meshes:
                await mesh.stop()
            harness.meshes.clear()


async def settled(check: Callable[[], Awaitable[bool] | bool], message: str) -> None:
    """``eventually`` with room for a machine busy with other tests: a poll, the ledger and
    three pushes lie between a change on a marketplace and its effect."""
    await eventually(check, timeout=30.0, message=message)


def shows(fake: FakeMarketplaces, value: int) -> Callable[[], bool]:
    def check() -> bool:
        return (
            fake.stock["ozon"].get("mug-oz") == value
            and fake.stock["wildberries"].get("77") == value
            and fake.stock["yandex"].get("mug-ym") == value
        )

    return check


async def stock_of(harness: Harness) -> dict[str, Any]:
    status, body = await harness.api("GET", "/api/v1/stock/products/mug")
    assert status == 200, body
    return dict(body)


async def polls_after(fake: FakeMarketplaces, feed: str, more: int) -> None:
    """Wait until the feed was read ``more`` further times."""
    start = fake.reads.get(feed, 0)
    await settled(lambda: fake.reads.get(feed, 0) >= start + more, message=f"{feed} polls")


@pytest.mark.e2e
async def test_orders_on_each_marketplace_reach_all_three_and_count_once(
    harness: Harness,
) -> None:
    async with running(harness) as fake:
        # When Ozon has a posting for 3
        fake.ozon_order("p-1", "awaiting_packaging", [("mug-oz", 3)])
        await settled(shows(fake, 7), message="the Ozon order's stock on all three")
        # Then later polls, whose windows overlap the first, see it again and count it once
        await polls_after(fake, "ozon.postings", 3)
        assert (await stock_of(harness))["on_hand"] == 7
        # When Wildberries has an assembly task (one unit), then the buyer cancels it
        order_id = fake.wb_order("rid-1", 77)
        await settled(shows(fake, 6), message="the Wildberries order on all three")
        fake.wb_cancel(order_id)
        await settled(shows(fake, 7), message="the cancellation on all three")
        # When Yandex has a reserve for 2, then the order is being processed
        fake.ym_order(3, 501, "RESERVED", [("mug-ym", 2)])
        await settled(shows(fake, 5), message="the Yandex reserve on all three")
        fake.ym_order(3, 501, "PROCESSING", [("mug-ym", 2)])
        await polls_after(fake, "yandex.orders", 3)
        body = await stock_of(harness)
        assert (body["on_hand"], body["reserved"], body["available"]) == (5, 0, 5)
        assert fake.violations == []


@pytest.mark.e2e
async def test_returns_bring_stock_back_on_all_three(harness: Harness) -> None:
    async with running(harness) as fake:
        fake.ozon_order("p-1", "delivered", [("mug-oz", 2)])
        fake.ym_order(3, 501, "DELIVERED", [("mug-ym", 3)])
        rid_order = fake.wb_order("rid-1", 77)
        await settled(shows(fake, 4), message="three orders on all three")
        assert rid_order in fake.wb_statuses
        # When each marketplace reports its return
        fake.ozon_return("p-1", "mug-oz", 2)
        fake.wb_claim("rid-1")  # names only the order: every line of it comes back
        fake.ym_return(3, 501, [("mug-ym", 3)])
        await settled(shows(fake, 10), message="the returned stock on all three")
        await polls_after(fake, "wildberries.claims", 3)
        assert (await stock_of(harness))["on_hand"] == 10
        assert fake.violations == []


@pytest.mark.e2e
async def test_a_marketplace_down_for_a_while_then_back_gets_the_latest_stock(
    harness: Harness,
) -> None:
    async with running(harness) as fake:
        fake.down = True
        # While it is down an order is placed there and the stock is counted again by hand
        fake.ozon_order("p-9", "awaiting_packaging", [("mug-oz", 4)])
        status, _ = await harness.api(
            "POST", "/api/v1/stock/products/mug/stock", json={"on_hand": 20}
        )
        assert status == 200
        engine = create_engine(DatabaseSettings(url=harness.database_url))

        async def poll_failed() -> bool:
            async with session_factory(engine)() as session:
                row = await session.get(StockSchedule, "poll.ozon.orders")
                return row is not None and "HTTP 503" in (row.last_error or "")

        try:
            await settled(poll_failed, message="the Ozon poll's failure recorded")
        finally:
            await engine.dispose()
        await settled(lambda: fake.refused_down >= 20, message="more polls and pushes refused")
        # When it is back: the order that was missed is read, and the latest stock arrives
        fake.down = False
        await settled(shows(fake, 16), message="the latest stock after the outage")
        assert fake.violations == []


@pytest.mark.e2e
async def test_bad_data_from_a_poll_is_reported_and_polling_goes_on(harness: Harness) -> None:
    async with running(harness) as fake:
        # An unknown offer in a posting, an unreadable Wildberries order, a Yandex feed whose
        # answer is not JSON at all
        fake.ozon_order("p-1", "awaiting_packaging", [("ghost", 1), ("mug-oz", 1)])
        fake.wb_orders.append({"id": "not-a-number", "_at": datetime.now(UTC)})
        fake.malformed.add("yandex.orders")
        fake.ym_order(3, 501, "PROCESSING", [("mug-ym", 2)])
        # Then the known line still counts
        await settled(shows(fake, 9), message="the known line of the posting")

        async def reported() -> bool:
            status, body = await harness.api("GET", "/api/v1/stock/problems")
            details = " | ".join(p["detail"] for p in body["problems"])
            return status == 200 and all(
                word in details for word in ("'ghost'", "malformed order", "not JSON")
            )

        await settled(reported, message="the three problems reported")
        # And polling goes on: once Yandex answers properly, its order (missed so far) counts
        fake.malformed.clear()
        await settled(shows(fake, 7), message="the Yandex order after the bad answers")
        engine = create_engine(DatabaseSettings(url=harness.database_url))
        try:
            async with session_factory(engine)() as session:
                rows = (await session.execute(select(StockSchedule))).scalars().all()
            polls = {r.name: r for r in rows if r.name.startswith("poll.")}
            assert len(polls) == 6
            assert all(r.cursor is not None for r in polls.values())
        finally:
            await engine.dispose()


@pytest.mark.e2e
async def test_an_unexpected_failure_fails_one_poll_and_the_schedule_goes_on(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_read = Pollers.read
    failures: list[str] = []

    async def read_failing_once(
        self: Pollers, marketplace: Marketplace, feed: str, window: PollWindow
    ) -> FeedPage:
        if (marketplace, feed) == (Marketplace.OZON, "orders") and not failures:
            failures.append(feed)
            raise RuntimeError("something nobody foresaw")
        return await real_read(self, marketplace, feed, window)

    monkeypatch.setattr(Pollers, "read", read_failing_once)
    async with running(harness) as fake:
        fake.ozon_order("p-1", "awaiting_packaging", [("mug-oz", 1)])
        await settled(shows(fake, 9), message="the order read by a later poll")
        status, body = await harness.api("GET", "/api/v1/stock/problems")
        assert status == 200
        details = [p["detail"] for p in body["problems"]]
        assert "orders poll failed: RuntimeError: something nobody foresaw" in details
        assert failures == ["orders"]
