"""Worker registration, heartbeats and views."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

WORKER_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class Tier(StrEnum):
    ACTIVE = "active"
    RESERVE = "reserve"


class WorkerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=WORKER_ID_PATTERN, description="becomes the queue workmesh.worker.<id>")
    capacity: int = Field(default=1, ge=1, le=10_000)
    tier: Tier = Tier.ACTIVE


class WorkerUpdate(BaseModel):
    """What an admin may change of a registered worker; at least one of the two."""

    model_config = ConfigDict(extra="forbid")

    capacity: int | None = Field(default=None, ge=1, le=10_000)
    tier: Tier | None = None

    @model_validator(mode="after")
    def _something(self) -> WorkerUpdate:
        if self.capacity is None and self.tier is None:
            raise ValueError("nothing to change: give capacity, tier or both")
        return self


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


class NotificationSettings(BaseModel):
    """Where to notify a worker of assignments while no channel of its is live."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: AnyHttpUrl | None = Field(default=None, description="POSTed a signed notice")
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$", max_length=320)
    # A new signing secret is made when a webhook is first set, or when this asks for one.
    new_secret: bool = False


class NotificationView(BaseModel):
    worker_id: str
    webhook_url: str | None
    email: str | None
    # Shown once, when made: the receiver verifies X-Workmesh-Signature with it.
    webhook_secret: str | None = None
