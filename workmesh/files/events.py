"""What happened to a file: a row in ``file_events`` (the SSE log) and a message on
``workmesh.events`` announcing it, published after the row is committed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.files import FileEvent, StoredFile

# Event kinds; the routing key on workmesh.events is "file.<kind>".
STORED = "stored"
REFER_ISSUED = "refer.issued"  # the first key of a cycle (after upload, or on restart)
REFER_RENEWED = "refer.renewed"
REFER_STOPPED = "refer.stopped"
STATUS = "status"
RESULT = "result"

ROUTING_PREFIX = "file."


@dataclass(frozen=True)
class Announcement:
    file_id: str
    kind: str
    data: dict[str, Any]

    @property
    def routing_key(self) -> str:
        return ROUTING_PREFIX + self.kind

    def body(self) -> dict[str, Any]:
        return {"file_id": self.file_id, "kind": self.kind, **self.data}

    def encoded(self) -> bytes:
        return json.dumps(self.body(), default=_iso).encode()


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


class EventLog:
    """Collects a transaction's events; ``announcements`` writes them."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._rows: list[dict[str, Any]] = []

    def record(self, file_id: str, kind: str, **data: Any) -> None:
        self._rows.append(
            {
                "file_id": file_id,
                "kind": kind,
                "data": json.loads(json.dumps(data, default=_iso)),
                "created_at": utcnow(),
            }
        )

    async def announcements(self) -> list[Announcement]:
        """Insert the rows and return what to publish after the commit. One executemany,
        without RETURNING: SQLite would insert row by row to return ids in order, and the
        announcements do not need them (SSE reads the rows, ids and all)."""
        if not self._rows:
            return []
        await self.session.execute(insert(FileEvent), self._rows)
        return [Announcement(r["file_id"], r["kind"], r["data"]) for r in self._rows]


def download_url(base: str, key: str) -> str:
    return f"{base.rstrip('/')}/files/download/{key}"


def refer_data(file: StoredFile, base: str) -> dict[str, Any]:
    """What a new key's event says: the key, its URL, and how long the cycle lasts."""
    assert file.refer_key is not None
    return {
        "refer": file.refer_key,
        "url": download_url(base, file.refer_key),
        "generation": file.refer_generation,
        "expires_at": file.refer_expires_at,
        "next_renewal_at": file.refer_next_at,
    }
