"""The analysis side's results against a refer: the result file, comments from the user and
the AI, the recommendation that merges them, and status reports."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.files import FileComment, FileRecommendation, StoredFile, ViolationType
from schemas.files import CommentCreate, StatusChange
from workmesh.api.common import ApiError
from workmesh.files import events
from workmesh.files.events import Announcement, EventLog
from workmesh.files.intake import load
from workmesh.files.statuses import FileStatus, Severity, may_move, worst


def move(file: StoredFile, log: EventLog, new: FileStatus, reason: str | None = None) -> None:
    current = FileStatus(file.status)
    if not may_move(current, new):
        raise ApiError(409, f"a file that is {current.value} cannot become {new.value}")
    file.status = new
    if new == FileStatus.ERROR:
        file.error = reason
    log.record(file.id, events.STATUS, status=new, reason=reason)


async def record_result(
    session: AsyncSession, file_id: str, size: int, content_type: str
) -> list[Announcement]:
    file = await load(session, file_id, lock=True)
    log = EventLog(session)
    file.result_size, file.result_content_type, file.result_at = size, content_type, utcnow()
    move(file, log, FileStatus.READY, "the analysis result was uploaded")
    log.record(file.id, events.RESULT, size=size, content_type=content_type)
    return await log.announcements()


async def change_status(
    session: AsyncSession, file_id: str, change: StatusChange
) -> list[Announcement]:
    file = await load(session, file_id, lock=True)
    log = EventLog(session)
    if change.status == FileStatus.ERROR and not change.reason:
        raise ApiError(422, "an error status needs a reason")
    move(file, log, change.status, change.reason)
    return await log.announcements()


async def add_comment(
    session: AsyncSession, file_id: str, body: CommentCreate, who: str
) -> FileComment:
    await load(session, file_id)
    if (
        body.violation_code is not None
        and await session.get(ViolationType, body.violation_code) is None
    ):
        raise ApiError(
            422,
            f"unknown violation type {body.violation_code!r}; see GET /api/v1/violation-types",
        )
    comment = FileComment(
        file_id=file_id,
        author=body.author,
        text=body.text,
        severity=body.severity,
        violation_code=body.violation_code,
        created_by=who,
        created_at=utcnow(),
    )
    session.add(comment)
    await session.flush()
    return comment


async def comments_of(session: AsyncSession, file_id: str) -> list[FileComment]:
    rows = await session.execute(
        select(FileComment).where(FileComment.file_id == file_id).order_by(FileComment.id)
    )
    return list(rows.scalars())


def merge(comments: list[FileComment]) -> tuple[str, str, Severity, list[str]]:
    """The user's comments and the AI's, each joined in order; the gravest severity; the
    violation types any of them named."""
    user = "\n".join(c.text for c in comments if c.author == "user")
    ai = "\n".join(c.text for c in comments if c.author == "ai")
    severity = worst([Severity(c.severity) for c in comments])
    codes = sorted({c.violation_code for c in comments if c.violation_code})
    return user, ai, severity, codes


async def recommend(
    session: AsyncSession, file_id: str
) -> tuple[FileRecommendation, list[Announcement]]:
    """Merge the comments into the file's one recommendation (made again on each call, so
    a later comment is included) and mark the file ``db_ready``."""
    file = await load(session, file_id, lock=True)
    comments = await comments_of(session, file_id)
    if not comments:
        raise ApiError(409, "there are no comments to merge yet")
    user, ai, severity, codes = merge(comments)
    row = await session.get(FileRecommendation, file_id)
    if row is None:
        row = FileRecommendation(file_id=file_id)
        session.add(row)
    row.user_text, row.ai_text, row.severity = user, ai, severity
    row.violation_codes, row.comments, row.created_at = codes, len(comments), utcnow()
    log = EventLog(session)
    move(file, log, FileStatus.DB_READY, "the recommendation is in the database")
    return row, await log.announcements()
