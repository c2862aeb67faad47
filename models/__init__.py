"""SQLAlchemy 2.x typed ORM models; the database is the source of truth for tasks and workers."""

# Capabilities' tables: importing them registers them on Base.metadata.
from models import bitrix24, files, orders, stock
from models.announcements import TaskAnnouncement
from models.base import Base
from models.tasks import Task
from models.tokens import ApiToken
from models.workers import Worker

__all__ = [
    "ApiToken",
    "Base",
    "Task",
    "TaskAnnouncement",
    "Worker",
    "bitrix24",
    "files",
    "orders",
    "stock",
]
