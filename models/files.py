"""Uploaded files, their chunks, refer keys, the event log for SSE, and analysis results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, utcnow


class StoredFile(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_size: Mapped[int] = mapped_column(Integer)
    # The whole file's SHA-256 as the client declared it; checked when the upload completes.
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="none")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    uploaded_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    # None while chunks are still arriving.
    stored_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)

    # The refer key: the current one, and the one it replaced (so a holder of the old key is
    # told it was replaced rather than that it never existed).
    refer_key: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    previous_refer_key: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    # Grows by one with every new key; a rotation message names the generation it renews, so
    # a stale or duplicated message changes nothing.
    refer_generation: Mapped[int] = mapped_column(Integer, default=0)
    refer_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # The end of the key's cycle: renewal stops and the last key stops working then.
    refer_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    refer_next_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Why renewal stopped ("downloaded", "time limit"); None while it runs.
    refer_stopped: Mapped[str | None] = mapped_column(String(16), nullable=True)

    result_size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_content_type: Mapped[str | None] = mapped_column(String(127), nullable=True)
    result_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class FileChunk(Base):
    """A chunk that arrived whole with the hash its sender declared."""

    __tablename__ = "file_chunks"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class FileEvent(Base):
    """What happened to a file, in order; the id is the SSE event id a client resumes from."""

    __tablename__ = "file_events"
    __table_args__ = (Index("ix_file_events_file_id_id", "file_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class FileComment(Base):
    __tablename__ = "file_comments"
    __table_args__ = (Index("ix_file_comments_file_id_id", "file_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    file_id: Mapped[str] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(String(8))  # "user" or "ai"
    text: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    violation_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class FileRecommendation(Base):
    """The user's and the AI's comments merged into one row per file (one refer)."""

    __tablename__ = "file_recommendations"

    file_id: Mapped[str] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    user_text: Mapped[str] = mapped_column(Text)
    ai_text: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    violation_codes: Mapped[list[str]] = mapped_column(JSON)
    comments: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ViolationType(Base):
    """The reference list of violation types comments classify by (loaded from CSV/XLSX)."""

    __tablename__ = "violation_types"

    code: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(500))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
