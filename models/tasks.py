"""Tasks and their lifecycle state."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, utcnow


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_status_updated_at", "status", "updated_at"),
        Index("ix_tasks_worker_id_status", "worker_id", "status"),
        # Finished tasks by when they finished: the retention sweep's oldest first and the
        # operator page's recent throughput. Partial, so a live task's moves never touch it.
        Index(
            "ix_tasks_finished_at",
            "finished_at",
            sqlite_where=text("finished_at IS NOT NULL"),
            postgresql_where=text("finished_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(
        ForeignKey("workers.id", ondelete="SET NULL"), nullable=True
    )
    # 1 for the first try; grows with each failure that is retried.
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    max_attempts: Mapped[int] = mapped_column(Integer)
    # The worker that last handed the task back; it is passed over once if another has room.
    rejected_by: Mapped[str | None] = mapped_column(String(63), nullable=True)
    # How many times workers handed it back; at WORKMESH_DISPATCH_MAX_REJECTIONS it is dead.
    rejections: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    result: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    submitted_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    assigned_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Set when the task is handed out over HTTP or WebSocket (not AMQP, where the broker's own
    # acknowledgement does this job): unless the worker starts it by then, it goes back to the
    # queue. Cleared at every new assignment.
    leased_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Optimistic concurrency: the API and the dispatcher leader both change tasks; an update
    # that lost a race fails (StaleDataError) instead of overwriting the winner.
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}  # noqa: RUF012
