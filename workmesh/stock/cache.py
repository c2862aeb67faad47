"""Marketplace data kept between calls (the seed's CacheManager), in ``stock_marketplace_cache``.

What is cached now: Ozon's ``product_id`` for each ``offer_id``. Ozon answers every pushed item
with its product_id; the pusher keeps it and sends it along from then on, so a product entered
by hand with only its offer_id is still pushed with both of Ozon's ids.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.stock import MarketplaceCacheEntry

OZON_PRODUCT_ID = ("ozon", "product_id")


async def lookup(
    session: AsyncSession, what: tuple[str, str], keys: Collection[str]
) -> dict[str, Any]:
    """The cached values of ``keys`` (missing keys are left out)."""
    if not keys:
        return {}
    marketplace, kind = what
    rows = await session.execute(
        select(MarketplaceCacheEntry.key, MarketplaceCacheEntry.value).where(
            MarketplaceCacheEntry.marketplace == marketplace,
            MarketplaceCacheEntry.kind == kind,
            MarketplaceCacheEntry.key.in_(list(keys)),
        )
    )
    return {str(row[0]): row[1] for row in rows}


async def remember(session: AsyncSession, what: tuple[str, str], values: Mapping[str, Any]) -> None:
    """Store or refresh ``values`` (key → value) in one statement."""
    if not values:
        return
    marketplace, kind = what
    now = utcnow()
    rows = [
        {"marketplace": marketplace, "kind": kind, "key": key, "value": value, "fetched_at": now}
        for key, value in values.items()
    ]
    # One statement run over many rows (executemany): its compiled form is cached, where a
    # multi-row VALUES would be compiled anew for every size.
    table = cast(Table, MarketplaceCacheEntry.__table__)
    keys = ["marketplace", "kind", "key"]
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(table)
        fresh = {"value": pg.excluded.value, "fetched_at": pg.excluded.fetched_at}
        await session.execute(pg.on_conflict_do_update(index_elements=keys, set_=fresh), rows)
    else:
        lite = sqlite.insert(table)
        fresh = {"value": lite.excluded.value, "fetched_at": lite.excluded.fetched_at}
        await session.execute(lite.on_conflict_do_update(index_elements=keys, set_=fresh), rows)
