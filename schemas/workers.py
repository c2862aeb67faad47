"""Worker registration, heartbeats and views."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

WORKER_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Tier(StrEnum):
    ACTIVE = "active"
    RESERVE = "reserve"


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=WORKER_ID_PATTERN, description="becomes the queue workmesh.worker.<id>")
    capacity: int = Field(default=1, ge=1, le=10_000)
    tier: Tier = Tier.ACTIVE


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid")

    worker_id: str = Field(min_length=1, max_length=63)


class WorkerView(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    tier: str
    capacity: int
    online: bool
    engaged: bool
    last_heartbeat_at: datetime | None
    load: int = 0
