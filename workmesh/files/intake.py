"""Chunked, resumable upload: declare the file, send chunks in any order and in parallel,
complete. Each chunk is streamed to storage while it is hashed; nothing holds a whole chunk."""

from __future__ import annotations

import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from aiohttp import ClientPayloadError, StreamReader
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.files import FileChunk, StoredFile
from schemas.files import RotationDue, UploadCreate
from workmesh.api.common import ApiError
from workmesh.files import events
from workmesh.files.events import Announcement, EventLog
from workmesh.files.rotation import RotationSchedule, new_refer_key
from workmesh.files.settings import FilesSettings
from workmesh.files.statuses import FileStatus
from workmesh.files.storage import PIECE, Storage

log = logging.getLogger(__name__)


def file_key(file_id: str) -> str:
    return f"files/{file_id}"


def chunk_count(file: StoredFile) -> int:
    return math.ceil(file.size / file.chunk_size)


def chunk_length(file: StoredFile, index: int) -> int:
    return min(file.chunk_size, file.size - index * file.chunk_size)


async def load(session: AsyncSession, file_id: str, *, lock: bool = False) -> StoredFile:
    query = select(StoredFile).where(StoredFile.id == file_id)
    if lock:
        query = query.with_for_update()
    file = (await session.execute(query)).scalar_one_or_none()
    if file is None:
        raise ApiError(404, f"no file {file_id!r}")
    return file


async def received_chunks(session: AsyncSession, file_id: str) -> dict[int, str]:
    rows = await session.execute(
        select(FileChunk.index, FileChunk.sha256).where(FileChunk.file_id == file_id)
    )
    return dict(rows.all())


async def create_upload(
    session: AsyncSession, storage: Storage, settings: FilesSettings, body: UploadCreate, who: str
) -> StoredFile:
    chunk_size = body.chunk_size or settings.chunk_size
    if not settings.min_chunk_size <= chunk_size <= settings.max_chunk_size:
        raise ApiError(
            422,
            f"chunk_size must lie between {settings.min_chunk_size} and "
            f"{settings.max_chunk_size} bytes",
        )
    if body.size > settings.max_file_size:
        raise ApiError(413, f"files larger than {settings.max_file_size} bytes are refused")
    file = StoredFile(
        id=str(uuid.uuid4()),
        name=body.name,
        size=body.size,
        chunk_size=chunk_size,
        sha256=body.sha256,
        status=FileStatus.NONE,
        uploaded_by=who,
        refer_generation=0,
    )
    session.add(file)
    await storage.allocate(file_key(file.id), file.size)
    return file


@dataclass(frozen=True)
class ChunkReceipt:
    index: int
    size: int
    sha256: str
    already: bool


class ChunkTooLong(Exception):
    pass


async def receive_chunk(
    session: AsyncSession,
    storage: Storage,
    file_id: str,
    index: int,
    declared_sha: str | None,
    content_length: int | None,
    body: StreamReader,
) -> ChunkReceipt:
    """Check, stream and record one chunk. The database session is not held open while the
    bytes arrive (that may take minutes from far away)."""
    async with session.begin():
        file = await load(session, file_id)
        have = (await received_chunks(session, file_id)).get(index)
    if file.stored_at is not None:
        raise ApiError(409, "the upload is already complete")
    if file.status == FileStatus.ERROR:
        raise ApiError(409, f"the upload failed and takes no more chunks: {file.error}")
    count = chunk_count(file)
    if not 0 <= index < count:
        raise ApiError(404, f"chunk {index} is out of range: this file has chunks 0..{count - 1}")
    if declared_sha is None:
        raise ApiError(400, "the X-Chunk-Sha256 header (hex SHA-256 of the chunk) is required")
    declared_sha = declared_sha.strip().lower()
    if len(declared_sha) != 64 or any(c not in "0123456789abcdef" for c in declared_sha):
        raise ApiError(400, "X-Chunk-Sha256 must be 64 hex digits")
    expected = chunk_length(file, index)
    if content_length is not None and content_length != expected:
        raise ApiError(400, f"chunk {index} must be {expected} bytes, not {content_length}")
    if have is not None:
        if have != declared_sha:
            raise ApiError(
                409, f"chunk {index} already arrived with another sha256 ({have})", sha256=have
            )
        return ChunkReceipt(index, expected, have, already=True)

    hasher = hashlib.sha256()
    arrived = 0

    async def pieces() -> AsyncIterator[bytes]:
        nonlocal arrived
        async for piece in body.iter_chunked(PIECE):
            arrived += len(piece)
            if arrived > expected:
                raise ChunkTooLong
            hasher.update(piece)
            yield piece

    try:
        await storage.write_part(file_key(file_id), index * file.chunk_size, pieces())
    except ChunkTooLong:
        raise ApiError(400, f"chunk {index} must be {expected} bytes; more arrived") from None
    except (ConnectionError, ClientPayloadError):
        # The link broke mid-chunk. Nothing is recorded: the client resends the whole chunk
        # (its bytes overwrite what half-arrived). The answer will likely reach nobody.
        log.info("chunk %d of %s broke off after %d bytes", index, file_id, arrived)
        raise ApiError(
            400, f"chunk {index} broke off after {arrived} of {expected} bytes; send it again"
        ) from None
    if arrived != expected:
        raise ApiError(
            400, f"chunk {index} must be {expected} bytes, only {arrived} arrived; send it again"
        )
    actual = hasher.hexdigest()
    if actual != declared_sha:
        raise ApiError(
            422,
            f"chunk {index} is damaged: its sha256 is {actual}, X-Chunk-Sha256 said "
            f"{declared_sha}; send it again",
        )
    try:
        async with session.begin():
            session.add(FileChunk(file_id=file_id, index=index, size=arrived, sha256=actual))
    except IntegrityError:
        # The same chunk sent twice at once: the other copy was recorded first.
        pass
    return ChunkReceipt(index, arrived, actual, already=False)


async def complete_upload(
    session: AsyncSession,
    storage: Storage,
    schedule: RotationSchedule,
    public_url: str,
    file_id: str,
) -> tuple[StoredFile, list[Announcement], RotationDue | None]:
    """Check every chunk and the whole file's hash, mark it stored and issue its first key.

    Returns what to publish after the commit and the first rotation message (None when the
    file was already complete, for completing twice changes nothing, or when the whole-file
    hash was wrong: then the file's status is ``error``).
    """
    async with session.begin():
        file = await load(session, file_id)
        have = await received_chunks(session, file_id)
    if file.stored_at is not None:
        return file, [], None
    if file.status == FileStatus.ERROR:
        raise ApiError(409, f"the upload failed: {file.error}")
    missing = [i for i in range(chunk_count(file)) if i not in have]
    if missing:
        raise ApiError(
            409,
            f"{len(missing)} of {chunk_count(file)} chunks have not arrived",
            missing=missing[:1000],
        )
    await storage.seal(file_key(file_id))
    actual = await storage.sha256(file_key(file_id))
    async with session.begin():
        file = await load(session, file_id, lock=True)
        if file.stored_at is not None:  # completed meanwhile by a parallel call
            return file, [], None
        log = EventLog(session)
        if actual != file.sha256:  # every chunk was right, so the declared hash is wrong
            file.status = FileStatus.ERROR
            file.error = f"the file's sha256 is {actual}, but {file.sha256} was declared"
            log.record(file.id, events.STATUS, status=file.status, reason=file.error)
            # The caller publishes this and answers 422: the file is void.
            return file, await log.announcements(), None
        now = utcnow()
        file.stored_at = now
        due = begin_cycle(file, schedule, now)
        log.record(file.id, events.STORED, name=file.name, size=file.size, sha256=file.sha256)
        log.record(file.id, events.REFER_ISSUED, **events.refer_data(file, public_url))
        return file, await log.announcements(), due


def begin_cycle(file: StoredFile, schedule: RotationSchedule, now: datetime) -> RotationDue:
    """Issue a new key and start a new cycle of renewals for it (the old key stops working)."""
    file.previous_refer_key = file.refer_key
    file.refer_key = new_refer_key()
    file.refer_generation += 1
    file.refer_started_at = now
    file.refer_expires_at, file.refer_next_at = schedule.cycle(now)
    file.refer_stopped = None
    assert file.refer_next_at is not None
    return RotationDue(file_id=file.id, generation=file.refer_generation, due_at=file.refer_next_at)
