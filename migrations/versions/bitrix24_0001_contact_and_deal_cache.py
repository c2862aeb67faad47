"""bitrix24: the local contact and deal cache with comment hashes

Revision ID: bitrix24_0001
Revises: 0001
Create Date: 2026-11-23 12:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "bitrix24_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("bitrix24",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bitrix24_contacts",
        sa.Column("phone", sa.String(length=32), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("phone", name=op.f("pk_bitrix24_contacts")),
    )
    op.create_table(
        "bitrix24_deals",
        sa.Column("ident_id", sa.String(length=64), nullable=False),
        sa.Column("deal_id", sa.BigInteger(), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("fields_hash", sa.String(length=64), nullable=True),
        sa.Column("comment_hash", sa.String(length=64), nullable=True),
        sa.Column("pending_comment_hash", sa.String(length=64), nullable=True),
        sa.Column("source_updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ident_id", name=op.f("pk_bitrix24_deals")),
    )


def downgrade() -> None:
    op.drop_table("bitrix24_deals")
    op.drop_table("bitrix24_contacts")
