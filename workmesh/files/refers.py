"""Refer keys in the database: finding a file by its key, stopping renewal when the parser
downloads, restarting a key on request, and renewing a batch of due keys in one transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.files import StoredFile
from schemas.files import RotationDue
from workmesh.api.common import ApiError
from workmesh.files import events
from workmesh.files.events import Announcement, EventLog, download_url
from workmesh.files.intake import begin_cycle, load
from workmesh.files.rotation import (
    ReferState,
    RotationSchedule,
    StopReason,
    Verdict,
    judge,
    new_refer_key,
)
from workmesh.files.statuses import FileStatus


async def find_by_key(
    session: AsyncSession, key: str, now: datetime, *, check_expiry: bool = True
) -> StoredFile:
    """The file whose current key is ``key``; a clear 404/410 for any other key."""
    found = (
        (
            await session.execute(
                select(StoredFile).where(
                    or_(StoredFile.refer_key == key, StoredFile.previous_refer_key == key)
                )
            )
        )
        .scalars()
        .all()
    )
    current = next((f for f in found if f.refer_key == key), None)
    if current is None:
        if found:
            raise ApiError(410, "this refer key was replaced by a newer one; use the current key")
        raise ApiError(404, "unknown refer key")
    if check_expiry and current.refer_expires_at is not None and now >= current.refer_expires_at:
        raise ApiError(
            410,
            f"this refer key expired at {current.refer_expires_at.isoformat()}; ask for a new "
            f"one with POST /api/v1/files/{current.id}/refer",
        )
    return current


async def mark_parser_download(
    session: AsyncSession, file_id: str, generation: int, stop_renewal: bool
) -> list[Announcement]:
    """The parser started downloading: the file is ``processing`` and (when configured) its
    key is no longer renewed. Returns what to announce; nothing when it changed nothing."""
    file = await load(session, file_id, lock=True)
    log = EventLog(session)
    if stop_renewal and file.refer_generation == generation and file.refer_stopped is None:
        file.refer_stopped = StopReason.DOWNLOADED
        file.refer_next_at = None
        log.record(file.id, events.REFER_STOPPED, reason=StopReason.DOWNLOADED)
    if file.status == FileStatus.NONE:
        file.status = FileStatus.PROCESSING
        log.record(file.id, events.STATUS, status=file.status, reason="the parser is downloading")
    return await log.announcements()


async def restart_key(
    session: AsyncSession, file_id: str, schedule: RotationSchedule, public_url: str
) -> tuple[StoredFile, list[Announcement], RotationDue]:
    """A new key and a new cycle of renewals (what the seed lacked)."""
    file = await load(session, file_id, lock=True)
    if file.stored_at is None:
        raise ApiError(409, "the file is not stored yet: complete the upload first")
    if file.status == FileStatus.ERROR and file.refer_key is None:
        raise ApiError(409, f"the upload failed: {file.error}")
    due = begin_cycle(file, schedule, utcnow())
    log = EventLog(session)
    log.record(file.id, events.REFER_ISSUED, restarted=True, **events.refer_data(file, public_url))
    return file, await log.announcements(), due


@dataclass
class Delivery:
    """One rotation message of a batch, and what came of it."""

    due: RotationDue
    redelivered: bool
    verdict: Verdict | None = None
    dead_reason: str | None = None  # set: the message can never work


@dataclass
class BatchOutcome:
    announcements: list[Announcement] = field(default_factory=list)
    renewed: int = 0
    lateness: list[float] = field(default_factory=list)  # seconds, of renewals and expiries


async def rotate_batch(
    session: AsyncSession,
    deliveries: list[Delivery],
    schedule: RotationSchedule,
    public_url: str,
    now: datetime,
) -> BatchOutcome:
    """Settle a batch of due rotation messages in the caller's transaction: one locking
    SELECT, one UPDATE executed for many rows, one INSERT of the events."""
    ids = sorted({d.due.file_id for d in deliveries})
    rows = await session.execute(
        select(
            StoredFile.id,
            StoredFile.refer_key,
            StoredFile.refer_generation,
            StoredFile.refer_expires_at,
            StoredFile.refer_next_at,
            StoredFile.refer_stopped,
            StoredFile.previous_refer_key,
        )
        .where(StoredFile.id.in_(ids))
        .with_for_update()
    )
    files = {row.id: _Refer(*row) for row in rows}
    log = EventLog(session)
    outcome = BatchOutcome()
    changed: dict[str, _Refer] = {}
    for delivery in deliveries:
        due = delivery.due
        refer = files.get(due.file_id)
        if refer is None:
            delivery.dead_reason = f"no file {due.file_id!r}"
            continue
        state = ReferState(refer.generation, refer.expires_at, refer.stopped)
        delivery.verdict = verdict = judge(state, due.generation, now, delivery.redelivered)
        if verdict is Verdict.RENEW:
            outcome.lateness.append((now - due.due_at).total_seconds())
            refer.previous_key, refer.key = refer.key, new_refer_key()
            refer.generation += 1
            refer.next_at = schedule.next_due(now)
            changed[refer.id] = refer
        elif verdict is Verdict.EXPIRE:
            outcome.lateness.append((now - due.due_at).total_seconds())
            refer.stopped, refer.next_at = StopReason.TIME_LIMIT, None
            changed[refer.id] = refer
            log.record(
                refer.id,
                events.REFER_STOPPED,
                reason=StopReason.TIME_LIMIT,
                expired_at=refer.expires_at,
            )
            continue
        elif verdict is not Verdict.RESEND:
            continue
        # The event is also the chain's next message (the delay queue is bound to it).
        log.record(refer.id, events.REFER_RENEWED, **refer.announced(public_url))
        outcome.renewed += verdict is Verdict.RENEW
    if changed:
        await session.execute(update(StoredFile), [r.values(now) for r in changed.values()])
    outcome.announcements = await log.announcements()
    return outcome


@dataclass
class _Refer:
    """The rotation columns of one file, as a batch reads and changes them."""

    id: str
    key: str | None
    generation: int
    expires_at: datetime | None
    next_at: datetime | None
    stopped: str | None
    previous_key: str | None

    def announced(self, public_url: str) -> dict[str, object]:
        assert self.key is not None
        return {
            "refer": self.key,
            "url": download_url(public_url, self.key),
            "generation": self.generation,
            "expires_at": self.expires_at,
            "next_renewal_at": self.next_at,
        }

    def values(self, now: datetime) -> dict[str, object]:
        # The same keys for every row, so the UPDATE runs as one executemany.
        return {
            "id": self.id,
            "refer_key": self.key,
            "previous_refer_key": self.previous_key,
            "refer_generation": self.generation,
            "refer_next_at": self.next_at,
            "refer_stopped": self.stopped,
            "updated_at": now,
        }
