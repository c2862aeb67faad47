"""The local contact/deal cache in the database. Functions take a session; none commits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.base import utcnow
from models.bitrix24 import Bitrix24Contact, Bitrix24Deal


@dataclass(frozen=True)
class DealState:
    ident_id: str
    deal_id: int
    contact_id: int
    fields_hash: str | None = None
    comment_hash: str | None = None
    pending_comment_hash: str | None = None
    source_updated_at: datetime | None = None

    def but(self, **changes: object) -> DealState:
        return replace(self, **changes)  # type: ignore[arg-type]


async def load_contacts(session: AsyncSession, phones: Iterable[str]) -> dict[str, int]:
    wanted = sorted(set(phones))
    if not wanted:
        return {}
    rows = await session.scalars(select(Bitrix24Contact).where(Bitrix24Contact.phone.in_(wanted)))
    return {row.phone: row.contact_id for row in rows}


async def load_deals(session: AsyncSession, ident_ids: Iterable[str]) -> dict[str, DealState]:
    wanted = sorted(set(ident_ids))
    if not wanted:
        return {}
    rows = await session.scalars(select(Bitrix24Deal).where(Bitrix24Deal.ident_id.in_(wanted)))
    return {
        row.ident_id: DealState(
            ident_id=row.ident_id,
            deal_id=row.deal_id,
            contact_id=row.contact_id,
            fields_hash=row.fields_hash,
            comment_hash=row.comment_hash,
            pending_comment_hash=row.pending_comment_hash,
            source_updated_at=row.source_updated_at,
        )
        for row in rows
    }


async def save_contacts(session: AsyncSession, contacts: Mapping[str, int]) -> None:
    if not contacts:
        return
    now = utcnow()
    existing = {
        row.phone: row
        for row in await session.scalars(
            select(Bitrix24Contact).where(Bitrix24Contact.phone.in_(sorted(contacts)))
        )
    }
    for phone, contact_id in contacts.items():
        row = existing.get(phone)
        if row is None:
            session.add(Bitrix24Contact(phone=phone, contact_id=contact_id, synced_at=now))
        else:
            row.contact_id, row.synced_at = contact_id, now


async def save_deals(session: AsyncSession, deals: Iterable[DealState]) -> None:
    by_ident = {deal.ident_id: deal for deal in deals}
    if not by_ident:
        return
    now = utcnow()
    existing = {
        row.ident_id: row
        for row in await session.scalars(
            select(Bitrix24Deal).where(Bitrix24Deal.ident_id.in_(sorted(by_ident)))
        )
    }
    for ident, deal in by_ident.items():
        row = existing.get(ident)
        if row is None:
            row = Bitrix24Deal(ident_id=ident)
            session.add(row)
        row.deal_id = deal.deal_id
        row.contact_id = deal.contact_id
        row.fields_hash = deal.fields_hash
        row.comment_hash = deal.comment_hash
        row.pending_comment_hash = deal.pending_comment_hash
        row.source_updated_at = deal.source_updated_at
        row.synced_at = now


async def forget_deals(session: AsyncSession, ident_ids: Iterable[str]) -> None:
    """Deals Bitrix24 no longer has: the next record looks them up (and creates them) again."""
    wanted = sorted(set(ident_ids))
    if wanted:
        await session.execute(delete(Bitrix24Deal).where(Bitrix24Deal.ident_id.in_(wanted)))
