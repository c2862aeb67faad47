"""Bodies of the files capability: HTTP requests and the messages it publishes and consumes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from workmesh.files.statuses import FileStatus, Severity

Sha256 = Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex SHA-256")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UploadCreate(Strict):
    name: str = Field(min_length=1, max_length=255)
    size: int = Field(ge=1)
    sha256: str = Sha256
    # Omitted: the server's default chunk size.
    chunk_size: int | None = Field(default=None, ge=1)


class StatusChange(Strict):
    status: Literal[FileStatus.ERROR, FileStatus.PROCESSING, FileStatus.DB_READY]
    reason: str | None = Field(default=None, max_length=2000)


class CommentCreate(Strict):
    author: Literal["user", "ai"]
    text: str = Field(min_length=1, max_length=20_000)
    severity: Severity = Severity.NONE
    violation_code: str | None = Field(default=None, max_length=64)


class ViolationTypeBody(Strict):
    code: str = Field(min_length=1, max_length=64, pattern=r"^\S(.*\S)?$")
    name: str = Field(min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=20_000)


class ViolationTypePatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=20_000)


class RotationDue(BaseModel):
    """The message a rotation chain is made of: renew ``generation`` of ``file_id``'s key.

    A ``file.refer.issued``/``file.refer.renewed`` event is one too (its ``next_renewal_at``
    is the due time): the delay queue is bound to those events, so announcing a key also
    schedules its renewal.
    """

    file_id: str = Field(min_length=1, max_length=36)
    generation: int = Field(ge=1)
    # When it was meant to arrive; lateness is measured against it.
    due_at: datetime = Field(validation_alias=AliasChoices("due_at", "next_renewal_at"))
