"""The orders capability's schedules (the resend sweep, the pull) in ``orders_schedules``;
the mechanism is workmesh/schedules.py."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from models.orders import OrdersSchedule
from workmesh import schedules
from workmesh.schedules import new_token

__all__ = ["PULL", "SWEEP", "OrdersSchedule", "is_live", "new_token", "renew", "take_over"]

SWEEP = "sweep"
PULL = "pull"


async def is_live(session: AsyncSession, name: str, token: str) -> OrdersSchedule | None:
    return await schedules.is_live(session, OrdersSchedule, name, token)


async def renew(
    session: AsyncSession,
    name: str,
    token: str,
    *,
    cursor: datetime | None = None,
    error: str | None = None,
) -> None:
    await schedules.renew(session, OrdersSchedule, name, token, cursor=cursor, error=error)


async def take_over(session: AsyncSession, name: str, token: str) -> None:
    await schedules.take_over(session, OrdersSchedule, name, token)
