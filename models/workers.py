"""External workers: their tier, capacity, token hash and last heartbeat."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, utcnow


class Worker(Base):
    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    tier: Mapped[str] = mapped_column(String(16))
    capacity: Mapped[int] = mapped_column(Integer)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Written by the dispatcher leader when it sees the worker come or go, for readers of the API.
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    # A reserve worker the scaling policy has brought into work.
    engaged: Mapped[bool] = mapped_column(Boolean, default=False)
    # Notifications for workers with no live channel (people): a signed webhook and/or email.
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # Kept in clear: the mesh signs every webhook body with it (HMAC-SHA256).
    webhook_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)
    email: Mapped[str | None] = mapped_column(String(320), nullable=True)
    # Set when an admin removes the worker. The row stays, so its finished tasks still say who
    # did them; everything else treats the worker as gone (``LIVE``), and adding the same id
    # again brings it back with a new token.
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# The workers that have not been removed.
LIVE = Worker.removed_at.is_(None)
