"""worker channels: leases for tasks handed out over HTTP/WebSocket, notification addresses

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 13:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("leased_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(length=2000), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("email", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("email")
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook_url")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("leased_until")
