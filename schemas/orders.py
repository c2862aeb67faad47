"""Orders API bodies: an order, the sync snapshot the peer sends, and collision resolution."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class OrderStatus(StrEnum):
    NEW = "new"
    PAID = "paid"
    SHIPPED = "shipped"
    CANCELLED = "cancelled"


class OrderLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=100)
    quantity: int = Field(ge=1, le=1_000_000)
    price_cents: int = Field(ge=0, le=10**12)


class OrderBody(BaseModel):
    """What a person edits; everything else about an order is the sync's."""

    model_config = ConfigDict(extra="forbid")

    customer: str = Field(min_length=1, max_length=200)
    status: OrderStatus = OrderStatus.NEW
    items: list[OrderLine] = Field(default_factory=list, max_length=500)
    note: str = Field(default="", max_length=2000)


class OrderCreate(OrderBody):
    # A client that gives its own id can retry a create safely: the same id and body again
    # answers 200 with the existing order instead of making a second one.
    id: UUID | None = None


class Snapshot(BaseModel):
    """An order as one instance tells it to the other (PUT /api/v1/orders/{id}/sync)."""

    model_config = ConfigDict(extra="forbid")

    state: int = Field(ge=1, le=8, description="the sender's sync state code")
    rev: int = Field(ge=1, description="the sender's revision of this order")
    ack: int = Field(ge=0, description="the receiver's revision the sender last applied")
    epoch: int = Field(ge=0, description="resolutions so far")
    origin: str = Field(min_length=1, max_length=32)
    sender: str = Field(min_length=1, max_length=32, description="the sending instance")
    body: OrderBody
    deleted: bool = False
    error: str | None = Field(default=None, max_length=4000)


# Snapshots in one batch sync request at most.
MAX_SNAPSHOTS = 500


class SnapshotItem(Snapshot):
    """One order's snapshot in a batch (POST /api/v1/orders/sync)."""

    id: UUID


class SnapshotBatch(BaseModel):
    """Several orders' snapshots at once, applied in the order given."""

    model_config = ConfigDict(extra="forbid")

    snapshots: list[SnapshotItem] = Field(min_length=1, max_length=MAX_SNAPSHOTS)
    answers: bool = Field(
        default=False,
        description=(
            "true: the receiver's answer to each order that needs one (the seed's '+' rows) "
            "comes back in the result as 'answer', and the receiver does not send it again; "
            "the sender applies it. false: the receiver sends its answers on its own."
        ),
    )


class Resolve(BaseModel):
    """Take an order out of COLLISION or ERROR: keep mine, take theirs, or a merged body."""

    model_config = ConfigDict(extra="forbid")

    take: Literal["mine", "theirs", "merged"]
    body: OrderBody | None = None  # only with "merged"
    deleted: bool = False  # only with "merged": resolve to a deletion


class OrderOut(BaseModel):
    id: str
    body: OrderBody
    deleted: bool
    origin: str
    sync_state: str
    state: int
    rev: int
    ack: int
    epoch: int
    theirs: dict[str, Any] | None
    error: str | None
    # The current snapshot has not reached the peer yet.
    pending: bool
    created_at: datetime
    updated_at: datetime
