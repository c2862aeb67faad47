"""The local cache of Bitrix24 contacts and deals, and what was last written to each deal."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UtcDateTime, utcnow


class Bitrix24Contact(Base):
    """A contact found or created by phone: the next record for the phone needs no look-up."""

    __tablename__ = "bitrix24_contacts"

    phone: Mapped[str] = mapped_column(String(32), primary_key=True)
    contact_id: Mapped[int] = mapped_column(BigInteger)
    synced_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class Bitrix24Deal(Base):
    """A deal by ident_id and the state of our last sync of it."""

    __tablename__ = "bitrix24_deals"

    ident_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deal_id: Mapped[int] = mapped_column(BigInteger)
    contact_id: Mapped[int] = mapped_column(BigInteger)
    # Hash of the deal fields last written: an unchanged record costs no update.
    fields_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Hash of the last comment added to the deal's timeline (the seed's comment_hashes.json).
    comment_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set, and committed, just before a comment is sent; cleared with the sync's commit. If it
    # is still set when the record comes again, the comment may be on the timeline already:
    # look it up before adding it.
    pending_comment_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    synced_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
