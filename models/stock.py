"""Marketplace stock: products and their marketplace identities, the order-line ledger, what
each marketplace was last sent, poll cursors and schedule chains, and cached marketplace data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, ScheduleColumns, UtcDateTime, utcnow


class StockProduct(Base):
    """A seller's product: one stock, sold on up to three marketplaces under their own ids."""

    __tablename__ = "stock_products"

    sku: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(300), default="")
    on_hand: Mapped[int] = mapped_column(Integer, default=0)
    # Held for marketplace orders not yet confirmed (a reserve): not on sale, not yet gone.
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    # Grows with every change of on_hand/reserved, so the pusher can tell old news from new.
    version: Mapped[int] = mapped_column(Integer, default=0)
    ozon_offer_id: Mapped[str | None] = mapped_column(String(100), unique=True, nullable=True)
    ozon_product_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ozon_warehouse_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    wb_chrt_id: Mapped[int | None] = mapped_column(BigInteger, unique=True, nullable=True)
    wb_warehouse_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ym_shop_sku: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    ym_campaign_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    @property
    def available(self) -> int:
        return max(0, self.on_hand - self.reserved)


class StockOrderLine(Base):
    """One product in one marketplace order, and how far the ledger has counted it."""

    __tablename__ = "stock_order_lines"

    marketplace: Mapped[str] = mapped_column(String(16), primary_key=True)
    order_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    sku: Mapped[str] = mapped_column(String(100), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # workmesh.stock.ledger.LineState
    # The marketplace's own handle when it differs from order_id (Wildberries' numeric id).
    ref: Mapped[str | None] = mapped_column(String(100), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    __table_args__ = (Index("ix_stock_order_lines_open", "marketplace", "state"),)


class StockReturn(Base):
    """A return already counted: a return seen again by an overlapping poll counts once."""

    __tablename__ = "stock_returns"

    marketplace: Mapped[str] = mapped_column(String(16), primary_key=True)
    return_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    sku: Mapped[str] = mapped_column(String(100), primary_key=True)
    quantity: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class StockPushItem(Base):
    """The latest stock each marketplace should show for a product, and what it was last sent.

    Changes coalesce here: a burst of changes to one product leaves one row with the newest
    value, and the pusher sends it once.
    """

    __tablename__ = "stock_push_items"

    marketplace: Mapped[str] = mapped_column(String(16), primary_key=True)
    sku: Mapped[str] = mapped_column(String(100), primary_key=True)
    target: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    # True while ``version`` has been neither pushed nor refused by the marketplace.
    pending: Mapped[bool] = mapped_column(Boolean, default=True)
    pushed_value: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pushed_version: Mapped[int] = mapped_column(Integer, default=0)
    pushed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    # The pusher scans a marketplace's pending items in SKU order along this index.
    __table_args__ = (Index("ix_stock_push_items_pending", "marketplace", "pending", "sku"),)


class StockSchedule(ScheduleColumns, Base):
    """One self-renewing schedule (a poll feed or a pusher): its live chain and its cursor.

    Each start of the capability begins a new chain; a scheduled message from an older chain
    finds another id here and is dropped, so restarts never multiply a schedule.
    """

    __tablename__ = "stock_schedules"


class StockProblem(Base):
    """Bad data from a marketplace (an unknown SKU, a malformed body): reported, not fatal."""

    __tablename__ = "stock_problems"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    marketplace: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class MarketplaceCacheEntry(Base):
    """Marketplace data worth keeping between calls (the seed's CacheManager), e.g. Ozon's
    product_id for an offer_id; ``fetched_at`` lets a reader decide it is too old."""

    __tablename__ = "stock_marketplace_cache"

    marketplace: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    fetched_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
