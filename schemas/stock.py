"""Messages and HTTP bodies of the stock capability."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Marketplace(StrEnum):
    OZON = "ozon"
    WILDBERRIES = "wildberries"
    YANDEX = "yandex"


class EventKind(StrEnum):
    RESERVE = "reserve"  # the order holds stock but is not confirmed yet
    ORDER = "order"  # the stock is sold
    CANCEL = "cancel"  # the order or reserve is gone; its stock comes back
    RETURN = "return"  # a sold item came back to the warehouse


class EventLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The marketplace's own item key: Ozon offer_id, Wildberries chrtId, Yandex shop SKU.
    item: str = Field(min_length=1, max_length=255)
    quantity: int = Field(ge=1, le=1_000_000)


class MarketplaceEvent(BaseModel):
    """What a poller saw on a marketplace; routing key ``stock.marketplace.<kind>``.

    ``lines`` empty on a return means "every line of that order" (Wildberries names only
    the order in a return claim).
    """

    model_config = ConfigDict(extra="forbid")

    marketplace: Marketplace
    kind: EventKind
    order_id: str = Field(min_length=1, max_length=100)
    return_id: str | None = Field(default=None, min_length=1, max_length=100)
    ref: str | None = Field(default=None, max_length=100)
    lines: list[EventLine] = Field(default_factory=list, max_length=1000)
    changed_at: datetime | None = None


class StockChanged(BaseModel):
    """Published after a product's stock changed: routing key ``stock.changed``."""

    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=100)
    on_hand: int
    reserved: int
    available: int = Field(ge=0)
    version: int = Field(ge=0)
    reason: str = Field(default="", max_length=200)


class PollRequest(BaseModel):
    """A scheduled poll of one feed (``orders`` or ``returns``) of one marketplace."""

    model_config = ConfigDict(extra="forbid")

    marketplace: Marketplace
    feed: str = Field(pattern="^(orders|returns)$")
    chain: str = Field(min_length=1, max_length=36)


class PushRound(BaseModel):
    """A scheduled round of the pusher for one marketplace."""

    model_config = ConfigDict(extra="forbid")

    marketplace: Marketplace
    chain: str = Field(min_length=1, max_length=36)


# --- HTTP bodies -----------------------------------------------------------------------------

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-/]{0,99}$"


class ProductIn(BaseModel):
    """``PUT /api/v1/stock/products/{sku}``: create or replace a product's mapping."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="", max_length=300)
    on_hand: int | None = Field(default=None, ge=0, le=10_000_000)
    ozon_offer_id: str | None = Field(default=None, min_length=1, max_length=100)
    ozon_product_id: int | None = Field(default=None, ge=1)
    ozon_warehouse_id: int | None = Field(default=None, ge=1)
    wb_chrt_id: int | None = Field(default=None, ge=1)
    wb_warehouse_id: int | None = Field(default=None, ge=1)
    ym_shop_sku: str | None = Field(default=None, min_length=1, max_length=255)
    ym_campaign_id: int | None = Field(default=None, ge=1)


class StockSet(BaseModel):
    """``PUT /api/v1/stock/products/{sku}/stock``: a stock count (``on_hand``) or a change."""

    model_config = ConfigDict(extra="forbid")

    on_hand: int | None = Field(default=None, ge=0, le=10_000_000)
    delta: int | None = Field(default=None, ge=-10_000_000, le=10_000_000)
    reason: str = Field(default="manual", max_length=200)


class PushState(BaseModel):
    marketplace: str
    target: int
    pending: bool
    pushed_value: int | None
    pushed_at: datetime | None
    error: str | None
    error_at: datetime | None


class ProductOut(BaseModel):
    sku: str
    name: str
    on_hand: int
    reserved: int
    available: int
    version: int
    ozon_offer_id: str | None
    ozon_product_id: int | None
    ozon_warehouse_id: int | None
    wb_chrt_id: int | None
    wb_warehouse_id: int | None
    ym_shop_sku: str | None
    ym_campaign_id: int | None
    updated_at: datetime
    push: list[PushState] = Field(default_factory=list)
