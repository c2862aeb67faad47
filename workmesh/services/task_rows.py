"""Tasks as plain rows for the dispatcher leader's hot path: grouped reads and writes in
SQLAlchemy Core, without the ORM's per-object bookkeeping (which cost more than the rest of a
dispatch put together).

Writes keep the ORM's optimistic concurrency: every update bumps ``version`` and matches the
version it read, so a change the HTTP API made meanwhile is never overwritten silently.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from models import Task

TASKS: Table = Task.__table__  # type: ignore[assignment]


@dataclass(slots=True)
class TaskRow:
    id: str
    kind: str
    payload: dict[str, Any]
    priority: int
    status: str
    idempotency_key: str | None
    worker_id: str | None
    attempt: int
    max_attempts: int
    rejected_by: str | None
    error: str | None
    assigned_at: datetime | None
    finished_at: datetime | None
    version: int
    result: Any = None
    submitted_by: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    leased_until: datetime | None = None


# What the hot path reads: everything but the (possibly large) result.
_UNREAD = ("result", "created_at", "updated_at", "submitted_by")
_READ = [c for c in TASKS.c if c.name not in _UNREAD]
_WRITTEN = (
    "status",
    "worker_id",
    "attempt",
    "rejected_by",
    "result",
    "error",
    "assigned_at",
    "finished_at",
    "leased_until",
)


def _row(values: Any) -> TaskRow:
    return TaskRow(**dict(values._mapping))


async def rows_for(
    session: AsyncSession, ids: Collection[str], keys: Collection[str] = ()
) -> list[TaskRow]:
    """The tasks named by id or by idempotency key, in one query."""
    clauses = []
    if ids:
        clauses.append(TASKS.c.id.in_(ids))
    if keys:
        clauses.append(TASKS.c.idempotency_key.in_(keys))
    if not clauses:
        return []
    result = await session.execute(select(*_READ).where(or_(*clauses)))
    return [_row(values) for values in result]


async def insert_rows(session: AsyncSession, rows: Sequence[TaskRow], now: datetime) -> None:
    if not rows:
        return
    names = [f.name for f in fields(TaskRow)]
    values = []
    for row in rows:
        item = {name: getattr(row, name) for name in names}
        item["created_at"] = item["updated_at"] = now
        values.append(item)
    await session.execute(insert(TASKS), values)


async def update_rows(session: AsyncSession, rows: Sequence[TaskRow], now: datetime) -> None:
    """Write each row's changed state, if nobody changed it since it was read.

    Raises StaleDataError when any row lost such a race; the caller's transaction then rolls
    back whole and the batch is read again.
    """
    if not rows:
        return
    statement = (
        update(TASKS)
        .where(TASKS.c.id == bindparam("b_id"), TASKS.c.version == bindparam("b_version"))
        .values(
            {name: bindparam(name) for name in _WRITTEN}
            | {"updated_at": now, "version": TASKS.c.version + 1}
        )
    )
    params = [
        {"b_id": row.id, "b_version": row.version} | {n: getattr(row, n) for n in _WRITTEN}
        for row in rows
    ]
    result = await session.execute(statement, params)
    if session.get_bind().dialect.supports_sane_multi_rowcount:
        changed = result.rowcount  # type: ignore[attr-defined]
    else:
        now_at = await session.execute(
            select(TASKS.c.id, TASKS.c.version).where(TASKS.c.id.in_([r.id for r in rows]))
        )
        expected = {row.id: row.version + 1 for row in rows}
        changed = sum(expected.get(task_id) == version for task_id, version in now_at)
    if changed != len(rows):
        raise StaleDataError(f"{len(rows) - changed} of {len(rows)} tasks changed meanwhile")
    for row in rows:
        row.version += 1
