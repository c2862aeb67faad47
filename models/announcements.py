"""What the HTTP API has committed and must still announce on RabbitMQ (an outbox)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, utcnow


class TaskAnnouncement(Base):
    """A task that left its worker through the API (a status change or a cancel), or a task
    the API stored but could not publish.

    A change's row is written in the same transaction as the change, and deleted once the API
    has published the report or cancel notice that makes the dispatcher leader do the
    follow-up. A submission's row is written only when its publish failed. A row that outlives
    its grace was never announced (a failed publish, a crash in between): the leader does the
    follow-up itself (workmesh/engine/healing.py).
    """

    __tablename__ = "task_announcements"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[str] = mapped_column(String(36))
    # The worker the task left; None for a submission.
    worker_id: Mapped[str | None] = mapped_column(String(63), nullable=True)
    # A report (done, failed, rejected), "cancelled" or "submitted".
    event: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
