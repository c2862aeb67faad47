"""Self-renewing schedules made of RabbitMQ messages (no cron, no sleeping loop).

Each schedule (a poll feed, a pusher) has exactly one live message: its token is stored in
``stock_schedules``; a message whose token is not the stored one is dropped. A handler
commits the next token, then publishes its message (through ``Delays``), so restarts and
redeliveries never multiply a schedule. A crash between the commit and the publish ends the
chain; every start of the capability begins a new one.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.stock import StockSchedule


def poll_name(marketplace: str, feed: str) -> str:
    return f"poll.{marketplace}.{feed}"


def push_name(marketplace: str) -> str:
    return f"push.{marketplace}"


def new_token() -> str:
    return str(uuid.uuid4())


async def is_live(session: AsyncSession, name: str, token: str) -> StockSchedule | None:
    """The schedule's row if ``token`` is its live message, else None (a stale message)."""
    row = await session.get(StockSchedule, name, with_for_update=True)
    return row if row is not None and row.chain == token else None


async def renew(
    session: AsyncSession,
    name: str,
    token: str,
    *,
    cursor: datetime | None = None,
    error: str | None = None,
) -> None:
    """Make ``token`` the live message; record the run (and move the cursor when given)."""
    row = await session.get(StockSchedule, name, with_for_update=True)
    if row is None:
        row = StockSchedule(name=name, chain=token)
        session.add(row)
    row.chain = token
    row.last_run_at = utcnow()
    row.last_error = error[:2000] if error else None
    if cursor is not None:
        row.cursor = cursor


async def take_over(session: AsyncSession, name: str, token: str) -> None:
    """A new chain (at start): any message of the old one is dropped when it arrives."""
    row = await session.get(StockSchedule, name, with_for_update=True)
    if row is None:
        session.add(StockSchedule(name=name, chain=token))
    else:
        row.chain = token
