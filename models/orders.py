"""Orders and their sync state with the peer instance, and the sync schedules.

An order is never removed: a delete leaves a tombstone (``deleted``) so that the deletion can
sync. ``rev`` grows with every change of what this side would tell the peer (state, body,
deletion, epoch); ``peer_rev`` is the peer's ``rev`` last applied here, and goes back to the
peer as the acknowledgement (``ack``) in every snapshot.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, ScheduleColumns, UtcDateTime, utcnow


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    # The instance where the order was created (A, B...).
    origin: Mapped[str] = mapped_column(String(32))
    sync_state: Mapped[int] = mapped_column(Integer)
    rev: Mapped[int] = mapped_column(Integer, default=1)
    peer_rev: Mapped[int] = mapped_column(Integer, default=0)
    # Grows with every resolution of a collision or error; a snapshot of an older epoch is
    # from before the resolution and is ignored.
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    # The peer's version while the order is in COLLISION or ERROR_SYNCED:
    # {"body": ..., "deleted": ...}.
    theirs: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The current snapshot must reach the peer (a local change or a "+" row) and has not yet.
    outbox: Mapped[bool] = mapped_column(Boolean, default=False)
    last_sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    last_send_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # Set on every change; the list's cursor is (updated_at, id).
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    state_since: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    __table_args__ = (
        Index("ix_orders_updated", "updated_at", "id"),
        Index("ix_orders_resend", "sync_state", "state_since"),
    )


class OrdersSchedule(ScheduleColumns, Base):
    """A self-renewing RabbitMQ message chain (resend sweep, pull): its live token and,
    for the pull, the peer's ``updated_at`` it has read up to."""

    __tablename__ = "orders_schedules"
