"""The refer-key rotation schedule and what a due rotation message means: pure decisions."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum


def new_refer_key() -> str:
    # 192 random bits: the key alone authorises a download, so it must not be guessable.
    return secrets.token_urlsafe(24)


class StopReason(StrEnum):
    DOWNLOADED = "downloaded"  # the parser started downloading
    TIME_LIMIT = "time limit"  # the cycle's lifetime ran out; the last key expired


@dataclass(frozen=True)
class RotationSchedule:
    interval: float  # seconds between renewals
    lifetime: float  # seconds from the first key of a cycle to the end of renewal

    def cycle(self, now: datetime) -> tuple[datetime, datetime]:
        """A new cycle starting ``now``: (when its keys expire, when the first renewal is due)."""
        return now + timedelta(seconds=self.lifetime), self.next_due(now)

    def next_due(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.interval)


@dataclass(frozen=True)
class ReferState:
    generation: int
    expires_at: datetime | None
    stopped: str | None


class Verdict(StrEnum):
    RENEW = "renew"  # issue the next key and schedule the next renewal
    EXPIRE = "expire"  # the lifetime is over: stop renewing, the key stops working
    RESEND = "resend"  # our renewal was committed but maybe not announced: announce it again
    IGNORE = "ignore"  # stale, duplicated, or renewal already stopped


def judge(state: ReferState, generation: int, now: datetime, redelivered: bool) -> Verdict:
    """What to do with a rotation message that renews ``generation``.

    Only a message naming the file's current generation renews it, so a duplicate, a message
    from before a restart of the key, or one arriving after renewal stopped changes nothing.
    A redelivered message whose renewal is already committed (the process died between the
    commit and the acknowledgement) may not have published its event and next message: those
    are sent again; a duplicate next message is harmless, for only one can match.
    """
    if state.stopped is not None:
        return Verdict.IGNORE
    if state.generation == generation + 1 and redelivered:
        return Verdict.RESEND
    if state.generation != generation:
        return Verdict.IGNORE
    if state.expires_at is not None and now >= state.expires_at:
        return Verdict.EXPIRE
    return Verdict.RENEW
