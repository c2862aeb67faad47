"""The pollers against the fake marketplaces, on SQLite and PostgreSQL: the poll window and its
overlap, an order seen by two overlapping polls counted once, cancellations and returns from
each feed, and bad data reported without stopping the rest."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clients.marketplaces.base import MalformedResponse
from clients.marketplaces.feeds import FeedPage
from models.stock import StockProduct
from schemas.stock import EventKind, Marketplace, ProductIn
from tests.stock.fakes import FakeMarketplaces, settings_for
from workmesh.db import create_engine, session_factory
from workmesh.settings import DatabaseSettings
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.pollers import Pollers, PollWindow, poll_window
from workmesh.stock.service import apply_event, upsert_product
from workmesh.stock.settings import StockSettings

ALL = tuple(Marketplace)
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_the_first_window_reaches_back_by_the_look_back_and_the_overlap() -> None:
    settings = StockSettings(poll_initial_lookback=3600, poll_overlap=600)
    window = poll_window(None, T0, settings)
    assert window == PollWindow(T0 - timedelta(seconds=4200), T0)


def test_a_window_starts_one_overlap_before_the_cursor() -> None:
    settings = StockSettings(poll_overlap=600)
    cursor = T0 - timedelta(seconds=60)
    assert poll_window(cursor, T0, settings) == PollWindow(cursor - timedelta(seconds=600), T0)


def test_a_cursor_ahead_of_the_clock_still_gives_a_window_ending_now() -> None:
    settings = StockSettings(poll_overlap=1)
    window = poll_window(T0 + timedelta(hours=1), T0, settings)
    assert window.until == T0
    assert window.since <= window.until


@dataclass
class Rig:
    fake: FakeMarketplaces
    pollers: Pollers
    sessions: async_sessionmaker[AsyncSession]
    settings: StockSettings


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    fake = FakeMarketplaces()
    server = TestServer(fake.app)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    settings = settings_for(
        base, http_attempts=2, http_max_wait=0.1,
        poll_overlap=60.0,
    )  # fmt: skip
    engine = create_engine(DatabaseSettings(url=database_url))
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await upsert_product(
            session,
            "mug",
            ProductIn(on_hand=10, ozon_offer_id="mug-oz", ozon_warehouse_id=1, wb_chrt_id=77,
                      wb_warehouse_id=2, ym_shop_sku="mug-ym", ym_campaign_id=3),
            ALL,
        )  # fmt: skip
    pollers = Pollers(settings, sessions)
    pollers.clients = Marketplaces.build(settings)
    try:
        yield Rig(fake, pollers, sessions, settings)
    finally:
        await pollers.clients.close()
        await server.close()
        await engine.dispose()


async def poll(rig: Rig, marketplace: Marketplace, feed: str, cursor: datetime | None) -> FeedPage:
    """One poll as the schedule runs it, applying what it read to the ledger."""
    window = poll_window(cursor, datetime.now(UTC), rig.settings)
    page = await rig.pollers.read(marketplace, feed, window)
    for event in page.events:
        async with rig.sessions() as session, session.begin():
            await apply_event(session, event, ALL)
    return page


async def mug(rig: Rig) -> StockProduct:
    async with rig.sessions() as session:
        product = await session.get(StockProduct, "mug")
        assert product is not None
        return product


@pytest.mark.e2e
@pytest.mark.parametrize("marketplace", ALL)
async def test_an_order_seen_by_two_overlapping_polls_counts_once(
    rig: Rig, marketplace: Marketplace
) -> None:
    if marketplace is Marketplace.OZON:
        rig.fake.ozon_order("p-1", "awaiting_packaging", [("mug-oz", 3)])
    elif marketplace is Marketplace.WILDBERRIES:
        for n in range(3):  # an assembly task is one unit: three of them
            rig.fake.wb_order(f"rid-{n}", 77)
    else:
        rig.fake.ym_order(3, 501, "PROCESSING", [("mug-ym", 3)])
    first = await poll(rig, marketplace, "orders", None)
    # The second poll's window starts an overlap before the first one's end
    second = await poll(rig, marketplace, "orders", datetime.now(UTC))
    assert [e.kind for e in first.events] == [EventKind.ORDER] * len(first.events)
    assert [e.order_id for e in second.events] == [e.order_id for e in first.events]
    assert (first.problems, second.problems) == ([], [])
    assert (await mug(rig)).on_hand == 7
    assert rig.fake.violations == []


@pytest.mark.e2e
async def test_a_poll_window_before_the_order_does_not_see_it(rig: Rig) -> None:
    rig.fake.ozon_order("p-1", "awaiting_packaging", [("mug-oz", 3)])
    past = PollWindow(T0 - timedelta(days=2), T0 - timedelta(days=1))
    assert (await rig.pollers.read(Marketplace.OZON, "orders", past)).events == []


@pytest.mark.e2e
async def test_wildberries_cancellations_are_found_by_asking_for_open_orders(rig: Rig) -> None:
    kept, cancelled = rig.fake.wb_order("rid-1", 77), rig.fake.wb_order("rid-2", 77)
    await poll(rig, Marketplace.WILDBERRIES, "orders", None)
    assert (await mug(rig)).on_hand == 8
    rig.fake.wb_cancel(cancelled)
    page = await poll(rig, Marketplace.WILDBERRIES, "orders", datetime.now(UTC))
    cancels = [e for e in page.events if e.kind is EventKind.CANCEL]
    assert [(e.order_id, e.ref) for e in cancels] == [("rid-2", str(cancelled))]
    assert (await mug(rig)).on_hand == 9
    assert kept in rig.fake.wb_statuses


@pytest.mark.e2e
async def test_returns_of_each_marketplace_come_back_once(rig: Rig) -> None:
    rig.fake.ozon_order("p-1", "delivered", [("mug-oz", 1)])
    rig.fake.wb_order("rid-1", 77)
    rig.fake.ym_order(3, 501, "DELIVERED", [("mug-ym", 2)])
    for marketplace in ALL:
        await poll(rig, marketplace, "orders", None)
    assert (await mug(rig)).on_hand == 6
    rig.fake.ozon_return("p-1", "mug-oz", 1)
    rig.fake.wb_claim("rid-1")
    rig.fake.ym_return(3, 501, [("mug-ym", 2)])
    for _ in range(2):  # twice: the second poll overlaps the first
        for marketplace in ALL:
            page = await poll(rig, marketplace, "returns", datetime.now(UTC))
            assert [e.kind for e in page.events] == [EventKind.RETURN]
    assert (await mug(rig)).on_hand == 10


@pytest.mark.e2e
async def test_unreadable_entries_are_problems_and_the_rest_counts(rig: Rig) -> None:
    rig.fake.ozon_order("p-1", "awaiting_packaging", [("mug-oz", 1)])
    rig.fake.ozon_order("p-2", "some_new_status", [("mug-oz", 1)])
    # A posting with no status and no products, as a broken answer might carry
    at = rig.fake.ozon_postings["p-1"]["_at"]
    rig.fake.ozon_postings["p-3"] = {"posting_number": "p-3", "_at": at}
    page = await poll(rig, Marketplace.OZON, "orders", None)
    assert [e.order_id for e in page.events] == ["p-1"]
    # In the feed's order, which ties between p-3 (given p-1's time) and p-2 do not fix
    problems = sorted(page.problems)
    assert len(problems) == 2
    assert problems[0].startswith("malformed posting")
    assert "unknown status 'some_new_status'" in problems[1]
    assert (await mug(rig)).on_hand == 9


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("marketplace", "feed"),
    [(Marketplace.OZON, "ozon.postings"), (Marketplace.WILDBERRIES, "wildberries.orders"),
     (Marketplace.YANDEX, "yandex.orders")],
)  # fmt: skip
async def test_an_unreadable_answer_fails_the_poll_with_a_reason(
    rig: Rig, marketplace: Marketplace, feed: str
) -> None:
    rig.fake.malformed.add(feed)
    with pytest.raises(MalformedResponse, match="not JSON"):
        await poll(rig, marketplace, "orders", None)


@pytest.mark.e2e
async def test_a_wildberries_order_we_cannot_name_is_a_problem_not_a_failed_poll(
    rig: Rig,
) -> None:
    rig.fake.wb_order("rid-1", 77)
    at = rig.fake.wb_orders[0]["_at"]
    rig.fake.wb_orders.append({"id": 9, "rid": "r" * 300, "chrtId": 77, "_at": at})
    page = await poll(rig, Marketplace.WILDBERRIES, "orders", None)
    assert [e.order_id for e in page.events] == ["rid-1"]
    assert len(page.problems) == 1
    assert page.problems[0].startswith("malformed order: String should have at most 100")
    assert (await mug(rig)).on_hand == 9
