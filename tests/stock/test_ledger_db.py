"""The stock ledger on SQLite and PostgreSQL: orders take stock, returns bring it back, an
event seen twice counts once, and an unknown item is reported, not fatal."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.stock import StockProblem, StockProduct, StockPushItem
from schemas.stock import EventKind, EventLine, Marketplace, MarketplaceEvent, ProductIn
from workmesh.db import create_engine, session_factory
from workmesh.settings import DatabaseSettings
from workmesh.stock.service import apply_event, upsert_product

ALL = tuple(Marketplace)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    factory = session_factory(engine)
    async with factory() as session, session.begin():
        await upsert_product(
            session,
            "mug",
            ProductIn(on_hand=10, ozon_offer_id="mug-oz", ozon_warehouse_id=1, wb_chrt_id=77,
                      wb_warehouse_id=2, ym_shop_sku="mug-ym", ym_campaign_id=3),
            ALL,
        )  # fmt: skip
    yield factory
    await engine.dispose()


async def apply(sessions: async_sessionmaker[AsyncSession], event: MarketplaceEvent) -> None:
    async with sessions() as session, session.begin():
        await apply_event(session, event, ALL)


async def product(sessions: async_sessionmaker[AsyncSession]) -> StockProduct:
    async with sessions() as session:
        found = await session.get(StockProduct, "mug")
        assert found is not None
        return found


def event(kind: EventKind, mp: Marketplace, item: str | None, **extra: str) -> MarketplaceEvent:
    lines = [EventLine(item=item, quantity=2)] if item else []
    return MarketplaceEvent(marketplace=mp, kind=kind, order_id="o-1", lines=lines, **extra)


@pytest.mark.e2e
async def test_order_twice_counts_once_and_queues_the_new_value_for_all_three(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    order = event(EventKind.ORDER, Marketplace.OZON, "mug-oz")
    await apply(sessions, order)
    await apply(sessions, order)
    assert (await product(sessions)).on_hand == 8
    async with sessions() as session:
        items = (await session.execute(select(StockPushItem))).scalars().all()
    assert {(i.marketplace, i.target, i.pending) for i in items} == {
        ("ozon", 8, True),
        ("wildberries", 8, True),
        ("yandex", 8, True),
    }


@pytest.mark.e2e
async def test_reserve_then_cancel_and_a_return_by_order_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await apply(sessions, event(EventKind.RESERVE, Marketplace.YANDEX, "mug-ym"))
    found = await product(sessions)
    assert (found.on_hand, found.reserved, found.available) == (10, 2, 8)
    await apply(sessions, event(EventKind.CANCEL, Marketplace.YANDEX, "mug-ym"))
    found = await product(sessions)
    assert (found.on_hand, found.reserved) == (10, 0)
    # Wildberries: one unit sold, then a claim naming only the order brings it back, once.
    await apply(sessions, event(EventKind.ORDER, Marketplace.WILDBERRIES, "77"))
    assert (await product(sessions)).on_hand == 8
    claim = event(EventKind.RETURN, Marketplace.WILDBERRIES, None, return_id="c-1")
    await apply(sessions, claim)
    await apply(sessions, claim)
    assert (await product(sessions)).on_hand == 10


@pytest.mark.e2e
async def test_an_unknown_item_is_reported_and_the_rest_applied(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    mixed = MarketplaceEvent(
        marketplace=Marketplace.OZON,
        kind=EventKind.ORDER,
        order_id="o-9",
        lines=[EventLine(item="nope", quantity=1), EventLine(item="mug-oz", quantity=1)],
    )
    await apply(sessions, mixed)
    # Seen again by an overlapping poll: counted once, reported once
    await apply(sessions, mixed)
    assert (await product(sessions)).on_hand == 9
    async with sessions() as session:
        problems = (await session.execute(select(StockProblem))).scalars().all()
    expected = "order o-9: unknown item 'nope' (no product maps to it)"
    assert [p.detail for p in problems] == [expected]
