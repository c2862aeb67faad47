"""Tasks as plain rows for the dispatcher leader's hot path: grouped reads and writes in
SQLAlchemy Core, without the ORM's per-object bookkeeping (which cost more than the rest of a
dispatch put together).

The functions take a synchronous connection: on SQLite the leader's own driver connection, on
the event loop, or through ``run_sync`` a SQLAlchemy one (workmesh/engine/store.py).

Writes keep the ORM's optimistic concurrency: every update bumps ``version`` and matches the
version it read, so a change the HTTP API made meanwhile is never overwritten silently.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, Table, bindparam, insert, or_, select, update
from sqlalchemy.orm.exc import StaleDataError

from models import Task
from workmesh.bulk import BulkStatement, RowQuery, StatementRunner

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
    rejections: int = 0


# What the hot path reads: everything but the (possibly large) result.
_UNREAD = ("result", "created_at", "updated_at", "submitted_by")
_READ = [c for c in TASKS.c if c.name not in _UNREAD]
_WRITTEN = (
    "status",
    "worker_id",
    "attempt",
    "rejected_by",
    "rejections",
    "result",
    "error",
    "assigned_at",
    "finished_at",
    "leased_until",
)


def _read(ids: int, keys: int) -> Select[Any]:
    clauses = []
    if ids:
        clauses.append(TASKS.c.id.in_([bindparam(f"id{n}") for n in range(ids)]))
    if keys:
        clauses.append(TASKS.c.idempotency_key.in_([bindparam(f"key{n}") for n in range(keys)]))
    return select(*_READ).where(or_(*clauses))


_READ_ROWS = RowQuery(_read)
_READ_NAMES = [c.name for c in _READ]
_INSERT = BulkStatement(insert(TASKS).values({c.name: bindparam(c.name) for c in TASKS.c}))
_UPDATE = BulkStatement(
    update(TASKS)
    .where(TASKS.c.id == bindparam("b_id"), TASKS.c.version == bindparam("b_version"))
    .values(
        {name: bindparam(name) for name in _WRITTEN}
        | {"updated_at": bindparam("b_now"), "version": TASKS.c.version + 1}
    )
)
_ROW_FIELDS = [f.name for f in fields(TaskRow)]


def read_rows(
    connection: StatementRunner, ids: Collection[str], keys: Collection[str] = ()
) -> list[TaskRow]:
    """The tasks named by id or by idempotency key, in one query."""
    if not ids and not keys:
        return []
    values = {f"id{n}": task_id for n, task_id in enumerate(ids)}
    values.update({f"key{n}": key for n, key in enumerate(keys)})
    rows = _READ_ROWS.execute_on(connection, (len(ids), len(keys)), values)
    return [TaskRow(**dict(zip(_READ_NAMES, row, strict=True))) for row in rows]


def write_rows(
    connection: StatementRunner,
    inserts: Sequence[TaskRow],
    updates: Sequence[TaskRow],
    now: datetime,
) -> None:
    """Insert new tasks, and write each changed row's state if nobody changed it since it was
    read.

    Raises IntegrityError when a new task's id or idempotency key is taken meanwhile, and
    StaleDataError when an update lost such a race; the caller's transaction then rolls back
    whole and the turn is read again.
    """
    if inserts:
        _INSERT.execute_on(
            connection,
            [{name: getattr(row, name) for name in _ROW_FIELDS} for row in inserts],
            {"created_at": now, "updated_at": now},
        )
    if updates:
        _update_rows(connection, updates, now)


def _update_rows(connection: StatementRunner, rows: Sequence[TaskRow], now: datetime) -> None:
    params = [
        {"b_id": row.id, "b_version": row.version} | {n: getattr(row, n) for n in _WRITTEN}
        for row in rows
    ]
    if connection.dialect.supports_sane_multi_rowcount:
        changed = _UPDATE.execute_on(connection, params, {"b_now": now})
    else:
        # The driver cannot count what an executemany changed (asyncpg): lock the rows,
        # compare their versions with those read, and only then write them.
        assert isinstance(connection, Connection), "a driver that cannot count runs on SQLAlchemy"
        # In id order: the api's groups of status changes and hand-outs (GroupCommit) lock
        # their rows in that order too (SQLAlchemy flushes updates by primary key), so the two
        # never wait for each other in a circle, whatever order the scan would find the rows.
        locked = (
            select(TASKS.c.id, TASKS.c.version)
            .where(TASKS.c.id.in_([r.id for r in rows]))
            .order_by(TASKS.c.id)
        )
        now_at: dict[str, int] = dict(connection.execute(locked.with_for_update()).all())
        changed = sum(now_at.get(row.id) == row.version for row in rows)
        if changed == len(rows):
            _UPDATE.execute_on(connection, params, {"b_now": now})
    if changed != len(rows):
        raise StaleDataError(f"{len(rows) - changed} of {len(rows)} tasks changed meanwhile")
    for row in rows:
        row.version += 1
