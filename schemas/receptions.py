"""A clinic reception as an event (``reception.upserted`` on workmesh.events)."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

# Digits only, 10 to 15 of them (E.164 allows 15), stored with a leading "+": Bitrix24's phone
# filter matches exactly, so one patient must always be written the same way.
_PHONE_NOISE = re.compile(r"[\s()\-.]")


class ReceptionStatus(StrEnum):
    SCHEDULED = "scheduled"
    CONFIRMED = "confirmed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


class Reception(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    ident_id: str = Field(min_length=1, max_length=64, description="the clinic system's id")
    phone: str = Field(description="the patient's phone; normalised to +<digits>")
    patient_name: str = Field(min_length=1, max_length=200)
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    status: ReceptionStatus = ReceptionStatus.SCHEDULED
    comment: str | None = Field(default=None, max_length=10_000)
    # When the clinic system last changed the record: an older event never overwrites a newer.
    updated_at: AwareDatetime

    @field_validator("phone")
    @classmethod
    def _normalise_phone(cls, value: str) -> str:
        digits = _PHONE_NOISE.sub("", value)
        if digits.startswith("+"):
            digits = digits[1:]
        elif digits.startswith("8") and len(digits) == 11:
            digits = "7" + digits[1:]  # the Russian trunk prefix: 8 900... is +7 900...
        if not digits.isdigit() or not 10 <= len(digits) <= 15:
            raise ValueError("a phone has 10 to 15 digits")
        return "+" + digits

    @field_validator("comment")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _ends_after_start(self) -> Reception:
        if self.ends_at is not None and self.ends_at < self.starts_at:
            raise ValueError("ends_at is before starts_at")
        return self


def is_newer(candidate: datetime, stored: datetime | None) -> bool:
    return stored is None or candidate >= stored
