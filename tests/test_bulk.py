"""BulkStatement writes exactly what SQLAlchemy's own executemany writes, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy import Table, Text, and_, bindparam, case, insert, select, update
from sqlalchemy import cast as cast_
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from models.stock import StockPushItem
from workmesh.bulk import BulkStatement
from workmesh.db import create_engine, session_factory
from workmesh.settings import DatabaseSettings

ITEMS = cast(Table, StockPushItem.__table__)
ITEM = and_(ITEMS.c.marketplace == bindparam("b_market"), ITEMS.c.sku == bindparam("b_sku"))
# The pusher's own shape: per-row values, a shared timestamp, literals, a CASE on a bind.
RECORD = (
    update(ITEMS)
    .where(ITEM)
    .values(
        pushed_value=bindparam("b_value"),
        pushed_version=bindparam("b_version"),
        pushed_at=bindparam("b_at"),
        error=None,
        pending=case((ITEMS.c.version == bindparam("b_version"), False), else_=ITEMS.c.pending),
    )
)
AT = datetime(2026, 11, 23, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(DatabaseSettings(url=database_url))
    async with engine.begin() as connection:
        await connection.execute(
            insert(ITEMS),
            [
                {"marketplace": m, "sku": f"s{n}", "target": n, "version": 2, "pending": True,
                 "pushed_version": 0, "error": "old"}
                for m in ("ozon", "yandex")
                for n in range(6)
            ],
        )  # fmt: skip
    yield session_factory(engine)
    await engine.dispose()


async def rows_of(sessions: async_sessionmaker[AsyncSession], market: str) -> list[Any]:
    async with sessions() as session:
        query = (
            select(
                ITEMS.c.sku, ITEMS.c.pending, ITEMS.c.pushed_value, ITEMS.c.pushed_version,
                ITEMS.c.pushed_at, ITEMS.c.error,
            )
            .where(ITEMS.c.marketplace == market)
            .order_by(ITEMS.c.sku)
        )  # fmt: skip
        return [tuple(row) for row in (await session.execute(query)).all()]


async def test_writes_what_sqlalchemys_executemany_writes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Versions 2 (the current one: no longer pending) and 1 (older: stays pending).
    rows = [{"b_sku": f"s{n}", "b_value": 10 + n, "b_version": 2 - n % 2} for n in range(5)]
    async with sessions() as session, session.begin():
        await session.execute(RECORD, [{**r, "b_market": "ozon", "b_at": AT} for r in rows])
    async with sessions() as session, session.begin():
        await BulkStatement(RECORD).execute(session, rows, {"b_market": "yandex", "b_at": AT})

    by_orm, by_bulk = await rows_of(sessions, "ozon"), await rows_of(sessions, "yandex")
    assert by_bulk == by_orm
    assert [r[1] for r in by_bulk] == [False, True, False, True, False, True]  # s5 untouched
    assert by_bulk[0][2:] == (10, 2, AT, None)
    assert by_bulk[5][2:] == (None, 0, None, "old")
    # Stored exactly as the ORM stores it: SQLite keeps text, compared as text in SQL.
    async with sessions() as session:
        stored = select(ITEMS.c.marketplace, cast_(ITEMS.c.pushed_at, Text)).where(
            ITEMS.c.pushed_at.is_not(None)
        )
        texts: dict[str, set[str]] = {m: set() for m in ("ozon", "yandex")}
        for market, text in (await session.execute(stored)).all():
            texts[market].add(text)
        assert texts["yandex"] == texts["ozon"]
        assert len(texts["ozon"]) == 1


async def test_a_row_without_a_value_is_refused_by_name_and_nothing_is_written(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rows = [{"b_sku": "s0", "b_value": 1, "b_version": 2}, {"b_sku": "s1", "b_value": 1}]
    with pytest.raises(ValueError, match="b_version"):
        async with sessions() as session, session.begin():
            await BulkStatement(RECORD).execute(session, rows, {"b_market": "ozon", "b_at": AT})
    assert all(row[1] for row in await rows_of(sessions, "ozon"))


async def test_statements_it_cannot_run_as_they_are_are_refused(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    expanding = update(ITEMS).where(ITEMS.c.sku.in_(["s0", "s1"])).values(target=bindparam("t"))
    async with sessions() as session:
        with pytest.raises(ValueError, match="IN lists"):
            await BulkStatement(expanding).execute(session, [{"t": 1}])
        # No rows: nothing to run, not an error.
        await BulkStatement(RECORD).execute(session, [])
