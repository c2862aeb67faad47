"""The pusher against the fake marketplaces, on SQLite and PostgreSQL: the latest value
reaches all three, a burst is pushed once, limits hold, per-item errors are recorded, and a
marketplace that was down gets the latest stock once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from clients.marketplaces.base import PushOutcome
from models.stock import StockPushItem
from schemas.stock import Marketplace, ProductIn
from tests.conftest import eventually
from tests.stock.fakes import FakeMarketplaces, settings_for
from workmesh.db import create_engine, session_factory
from workmesh.settings import DatabaseSettings
from workmesh.stock import cache
from workmesh.stock.marketplaces import Marketplaces
from workmesh.stock.metrics import StockMetrics
from workmesh.stock.pusher import Pending, Pusher, RoundEnd
from workmesh.stock.service import set_stock, upsert_product

ALL = tuple(Marketplace)


@dataclass
class Rig:
    fake: FakeMarketplaces
    pusher: Pusher
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture
async def rig(database_url: str) -> AsyncIterator[Rig]:
    # Per-minute windows shortened to a second so the test runs in seconds.
    fake = FakeMarketplaces(
        ozon_requests=4, ozon_window=1.0, ozon_item_interval=1.0, wb_requests=5, wb_window=1.0
    )
    server = TestServer(fake.app)
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    settings = settings_for(
        base, ozon_batch=10, ozon_requests=4, ozon_window=1.0, ozon_item_interval=1.0,
        wb_batch=20, wb_requests=5, wb_window=1.0, ym_batch=30,
        http_attempts=2, http_max_wait=0.2, push_round=30.0,
    )  # fmt: skip
    engine = create_engine(DatabaseSettings(url=database_url))
    sessions = session_factory(engine)
    from prometheus_client import CollectorRegistry

    pusher = Pusher(settings, sessions, StockMetrics(CollectorRegistry()))
    pusher.clients = Marketplaces.build(settings)
    try:
        yield Rig(fake, pusher, sessions)
    finally:
        await pusher.clients.close()
        await server.close()
        await engine.dispose()


async def add_products(rig: Rig, count: int, on_hand: int = 5) -> None:
    async with rig.sessions() as session, session.begin():
        for n in range(count):
            await upsert_product(
                session,
                f"sku-{n}",
                ProductIn(
                    on_hand=on_hand,
                    ozon_offer_id=f"of-{n}",
                    ozon_warehouse_id=1,
                    wb_chrt_id=1000 + n,
                    wb_warehouse_id=7 + n % 2,
                    ym_shop_sku=f"ym-{n}",
                    ym_campaign_id=42,
                ),
                ALL,
            )


async def push_all(rig: Rig) -> None:
    for marketplace in ALL:
        for _ in range(50):
            if await rig.pusher.run_round(marketplace) is RoundEnd.IDLE:
                break


@pytest.mark.e2e
async def test_latest_stock_reaches_all_three_within_limits(rig: Rig) -> None:
    # Given 45 products: more than a window's worth of requests on Ozon and Wildberries
    await add_products(rig, 45)
    # When the pusher runs
    await push_all(rig)
    # Then every marketplace shows every product's stock, and no limit was broken
    assert rig.fake.stock["ozon"] == {f"of-{n}": 5 for n in range(45)}
    assert rig.fake.stock["wildberries"] == {str(1000 + n): 5 for n in range(45)}
    assert rig.fake.stock["yandex"] == {f"ym-{n}": 5 for n in range(45)}
    # Each item was sent once: planning ahead never puts an item in two requests
    for marketplace in ("ozon", "wildberries", "yandex"):
        assert set(rig.fake.writes[marketplace].values()) == {1}
    assert rig.fake.violations == []


@pytest.mark.e2e
async def test_a_burst_to_one_item_is_pushed_once(rig: Rig) -> None:
    await add_products(rig, 1)
    for n in range(20):
        async with rig.sessions() as session, session.begin():
            await set_stock(session, "sku-0", ALL, on_hand=n)
    await push_all(rig)
    for marketplace, key in (("ozon", "of-0"), ("wildberries", "1000"), ("yandex", "ym-0")):
        assert rig.fake.stock[marketplace] == {key: 19}
        assert rig.fake.writes[marketplace] == {key: 1}


@pytest.mark.e2e
async def test_refused_items_are_recorded_and_the_rest_go_through(rig: Rig) -> None:
    await add_products(rig, 6)
    rig.fake.unknown |= {"of-2", "1003", "ym-4"}
    await push_all(rig)
    assert "of-2" not in rig.fake.stock["ozon"]
    assert len(rig.fake.stock["ozon"]) == 5
    assert "1003" not in rig.fake.stock["wildberries"]
    assert len(rig.fake.stock["wildberries"]) == 5
    assert "ym-4" not in rig.fake.stock["yandex"]
    assert len(rig.fake.stock["yandex"]) == 5
    async with rig.sessions() as session:
        items = (await session.execute(select(StockPushItem))).scalars().all()
    errors = {(i.marketplace, i.sku): i.error for i in items if i.error}
    assert set(errors) == {("ozon", "sku-2"), ("wildberries", "sku-3"), ("yandex", "sku-4")}
    assert all(not i.pending for i in items)
    assert rig.fake.violations == []


@pytest.mark.e2e
async def test_a_marketplace_down_then_back_gets_the_latest_stock(rig: Rig) -> None:
    await add_products(rig, 3)
    rig.fake.down = True
    for marketplace in ALL:
        assert await rig.pusher.run_round(marketplace) is RoundEnd.DOWN
    async with rig.sessions() as session, session.begin():
        await set_stock(session, "sku-1", ALL, on_hand=9)
    rig.fake.down = False
    await push_all(rig)
    assert rig.fake.stock["ozon"] == {"of-0": 5, "of-1": 9, "of-2": 5}
    assert rig.fake.stock["wildberries"] == {"1000": 5, "1001": 9, "1002": 5}
    assert rig.fake.stock["yandex"] == {"ym-0": 5, "ym-1": 9, "ym-2": 5}


@pytest.mark.e2e
async def test_ozon_product_ids_are_cached_and_sent_along(rig: Rig) -> None:
    # Given products entered with only their Ozon offer_id
    await add_products(rig, 2)
    await push_all(rig)
    assert rig.fake.ozon_sent_product_id == {"of-0": 0, "of-1": 0}
    # Then Ozon's answer taught us each offer's product_id
    async with rig.sessions() as session:
        cached = await cache.lookup(session, cache.OZON_PRODUCT_ID, ["of-0", "of-1", "of-9"])
    assert cached == {offer: rig.fake.ozon_product_ids[offer] for offer in ("of-0", "of-1")}
    # When the stock changes, the next push names the product_id too
    async with rig.sessions() as session, session.begin():
        await set_stock(session, "sku-0", ALL, on_hand=8)

    async def pushed_with_product_id() -> bool:
        await push_all(rig)  # Ozon takes the item again only after its interval
        return rig.fake.ozon_sent_product_id["of-0"] == rig.fake.ozon_product_ids["of-0"]

    await eventually(pushed_with_product_id, message="a push naming Ozon's product_id")
    assert rig.fake.stock["ozon"]["of-0"] == 8
    assert rig.fake.violations == []


@pytest.mark.e2e
async def test_a_change_while_its_push_is_in_flight_is_pushed_next(rig: Rig) -> None:
    await add_products(rig, 3)
    rig.fake.latency = 0.3  # long enough to change the stock while the request is out
    first = asyncio.create_task(rig.pusher.run_round(Marketplace.YANDEX))
    await eventually(lambda: rig.fake.requests["yandex"] == 1, message="the push in flight")
    async with rig.sessions() as session, session.begin():
        await set_stock(session, "sku-1", ALL, on_hand=2)
    assert await first is RoundEnd.IDLE
    # Then the answer about the old value did not settle the item: the new value followed
    assert rig.fake.stock["yandex"] == {"ym-0": 5, "ym-1": 2, "ym-2": 5}
    assert rig.fake.writes["yandex"] == {"ym-0": 1, "ym-1": 2, "ym-2": 1}
    async with rig.sessions() as session:
        item = await session.get(StockPushItem, ("yandex", "sku-1"))
        assert item is not None
        assert (item.pending, item.pushed_value, item.pushed_version) == (False, 2, item.version)


@pytest.mark.e2e
async def test_an_answer_recorded_while_a_change_is_written_leaves_the_change_pending(
    rig: Rig,
) -> None:
    # Given an item whose value v is in flight (pending, as the pusher read it)
    await add_products(rig, 1)
    await push_all(rig)
    async with rig.sessions() as session, session.begin():
        await set_stock(session, "sku-0", ALL, on_hand=4)
    async with rig.sessions() as session:
        sent = await session.get(StockPushItem, ("yandex", "sku-0"))
    assert sent is not None
    assert sent.pending
    # When a change has read the item (still pending) and the answer about v is recorded
    # before the change commits
    in_flight = Pending("sku-0", sent.target, sent.version, "ym-0", 42)
    async with rig.sessions() as change, change.begin():
        await set_stock(change, "sku-0", [Marketplace.YANDEX], on_hand=3)
        recording = asyncio.create_task(
            rig.pusher.record(Marketplace.YANDEX, [([in_flight], PushOutcome(["sku-0"]))])
        )
        await asyncio.wait({recording}, timeout=1.0)
        # PostgreSQL records at once (the change locks only the product's row); SQLite's one
        # writer at a time makes the record wait for the change, so the race cannot happen.
        assert recording.done() == (change.get_bind().dialect.name == "postgresql")
    await recording
    # Then the newer value is still pending: recording v's answer did not settle it
    async with rig.sessions() as session:
        item = await session.get(StockPushItem, ("yandex", "sku-0"))
    assert item is not None
    assert (item.pending, item.target, item.version) == (True, 3, sent.version + 1)
    await push_all(rig)
    assert rig.fake.stock["yandex"] == {"ym-0": 3}


@pytest.mark.e2e
async def test_an_item_whose_product_lost_its_ids_is_refused_not_sent(rig: Rig) -> None:
    await add_products(rig, 2)
    # Before the first push, the product stops being sold on Ozon
    async with rig.sessions() as session, session.begin():
        await upsert_product(session, "sku-1", ProductIn(ozon_offer_id=None), ALL)
    await push_all(rig)
    assert rig.fake.stock["ozon"] == {"of-0": 5}
    async with rig.sessions() as session:
        item = await session.get(StockPushItem, ("ozon", "sku-1"))
    assert item is not None
    assert (item.pending, item.error) == (False, "the product has no ozon ids any more")
