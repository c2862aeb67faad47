"""The stock capability's schedules (poll feeds, pushers) in ``stock_schedules``; the
mechanism is workmesh/schedules.py."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from models.stock import StockSchedule
from workmesh import schedules
from workmesh.schedules import new_token

__all__ = ["is_live", "new_token", "poll_name", "push_name", "renew", "take_over"]


def poll_name(marketplace: str, feed: str) -> str:
    return f"poll.{marketplace}.{feed}"


def push_name(marketplace: str) -> str:
    return f"push.{marketplace}"


async def is_live(session: AsyncSession, name: str, token: str) -> StockSchedule | None:
    return await schedules.is_live(session, StockSchedule, name, token)


async def renew(
    session: AsyncSession,
    name: str,
    token: str,
    *,
    cursor: datetime | None = None,
    error: str | None = None,
) -> None:
    await schedules.renew(session, StockSchedule, name, token, cursor=cursor, error=error)


async def take_over(session: AsyncSession, name: str, token: str) -> None:
    await schedules.take_over(session, StockSchedule, name, token)
