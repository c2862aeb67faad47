"""orders with their sync state, and the sync schedules

Revision ID: orders_0001
Revises: 0001
Create Date: 2026-11-23 16:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "orders_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("orders",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.String(length=32), nullable=False),
        sa.Column("sync_state", sa.Integer(), nullable=False),
        sa.Column("rev", sa.Integer(), nullable=False),
        sa.Column("peer_rev", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("theirs", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outbox", sa.Boolean(), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_send_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state_since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    op.create_index("ix_orders_updated", "orders", ["updated_at", "id"], unique=False)
    op.create_index("ix_orders_resend", "orders", ["sync_state", "state_since"], unique=False)
    op.create_table(
        "orders_schedules",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("chain", sa.String(length=36), nullable=False),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_orders_schedules")),
    )


def downgrade() -> None:
    op.drop_table("orders_schedules")
    op.drop_index("ix_orders_resend", table_name="orders")
    op.drop_index("ix_orders_updated", table_name="orders")
    op.drop_table("orders")
