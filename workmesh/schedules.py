"""Self-renewing schedules made of RabbitMQ messages (no cron, no sleeping loop).

Each schedule has exactly one live message: its token is stored in the capability's schedule
table (a ``ScheduleColumns`` model); a message whose token is not the stored one is from an
older chain and is dropped. A handler commits the next token, then publishes its message
(through ``workmesh.delays``), so restarts and redeliveries never multiply a schedule. A crash
between the commit and the publish ends the chain; the capability's next start begins a new one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from models.base import ScheduleColumns, utcnow

Row = TypeVar("Row", bound=ScheduleColumns)


def new_token() -> str:
    return str(uuid.uuid4())


async def is_live(session: AsyncSession, table: type[Row], name: str, token: str) -> Row | None:
    """The schedule's row if ``token`` is its live message, else None (a stale message)."""
    row = await session.get(table, name, with_for_update=True)
    return row if row is not None and row.chain == token else None


async def renew(
    session: AsyncSession,
    table: type[Row],
    name: str,
    token: str,
    *,
    cursor: datetime | None = None,
    error: str | None = None,
) -> None:
    """Make ``token`` the live message; record the run (and move the cursor when given)."""
    row = await session.get(table, name, with_for_update=True)
    if row is None:
        row = _new_row(session, table, name)
    row.chain = token
    row.last_run_at = utcnow()
    row.last_error = error[:2000] if error else None
    if cursor is not None:
        row.cursor = cursor


async def take_over(session: AsyncSession, table: type[Row], name: str, token: str) -> None:
    """A new chain (at start): any message of the old one is dropped when it arrives."""
    row = await session.get(table, name, with_for_update=True)
    if row is None:
        row = _new_row(session, table, name)
    row.chain = token


def _new_row(session: AsyncSession, table: type[Row], name: str) -> Row:
    row = table()  # the mapped class's constructor; the mixin alone takes no keywords
    row.name = name
    session.add(row)
    return row
