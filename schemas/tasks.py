"""Task messages: what producers submit, what workers receive and report."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskSubmit(_Strict):
    """Body of a message on ``workmesh.tasks`` / ``submit``, and of ``POST /api/v1/tasks``."""

    id: UUID | None = None
    kind: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    priority: int = Field(default=0, ge=0, le=9, description="9 is the highest")
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=200)


class Assignment(BaseModel):
    """What a worker receives on its queue ``workmesh.worker.<worker_id>``."""

    task_id: str
    kind: str
    payload: dict[str, Any]
    priority: int
    attempt: int


class ReportKind(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


class TaskReport(_Strict):
    """A worker's report on ``workmesh.events`` with routing key ``task.<kind>``."""

    task_id: str = Field(min_length=1, max_length=36)
    worker_id: str = Field(min_length=1, max_length=63)
    result: Any | None = None
    error: str | None = Field(default=None, max_length=10_000)


class StatusChange(_Strict):
    """Body of ``POST /api/v1/worker/tasks/{id}/status``."""

    status: Literal["in_progress", "done", "failed", "rejected"]
    result: Any | None = None
    error: str | None = Field(default=None, max_length=10_000)


class TaskView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    payload: dict[str, Any]
    priority: int
    status: str
    worker_id: str | None
    attempt: int
    max_attempts: int
    rejections: int
    idempotency_key: str | None
    result: Any | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    assigned_at: datetime | None
    finished_at: datetime | None
