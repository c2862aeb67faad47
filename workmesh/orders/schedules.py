"""Self-renewing schedules (the resend sweep, the pull) made of RabbitMQ delayed messages.

As in workmesh/stock/schedules.py: each schedule has one live token in ``orders_schedules``;
a message with another token is from an older chain and is dropped, so restarts and
redeliveries never multiply a schedule.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.orders import OrdersSchedule

__all__ = ["PULL", "SWEEP", "OrdersSchedule", "is_live", "new_token", "renew", "take_over"]

SWEEP = "sweep"
PULL = "pull"


def new_token() -> str:
    return str(uuid.uuid4())


async def is_live(session: AsyncSession, name: str, token: str) -> OrdersSchedule | None:
    row = await session.get(OrdersSchedule, name, with_for_update=True)
    return row if row is not None and row.chain == token else None


async def renew(
    session: AsyncSession,
    name: str,
    token: str,
    *,
    cursor: datetime | None = None,
    error: str | None = None,
) -> None:
    row = await session.get(OrdersSchedule, name, with_for_update=True)
    if row is None:
        row = OrdersSchedule(name=name, chain=token)
        session.add(row)
    row.chain = token
    row.last_run_at = utcnow()
    row.last_error = error[:2000] if error else None
    if cursor is not None:
        row.cursor = cursor


async def take_over(session: AsyncSession, name: str, token: str) -> None:
    row = await session.get(OrdersSchedule, name, with_for_update=True)
    if row is None:
        session.add(OrdersSchedule(name=name, chain=token))
    else:
        row.chain = token
