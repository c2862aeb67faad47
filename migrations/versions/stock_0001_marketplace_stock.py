"""marketplace stock: products, order lines, returns, push items, schedules, problems, cache

Revision ID: stock_0001
Revises: 0001
Create Date: 2026-11-23 12:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "stock_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("stock",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stock_products",
        sa.Column("sku", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ozon_offer_id", sa.String(length=100), nullable=True),
        sa.Column("ozon_product_id", sa.BigInteger(), nullable=True),
        sa.Column("ozon_warehouse_id", sa.BigInteger(), nullable=True),
        sa.Column("wb_chrt_id", sa.BigInteger(), nullable=True),
        sa.Column("wb_warehouse_id", sa.BigInteger(), nullable=True),
        sa.Column("ym_shop_sku", sa.String(length=255), nullable=True),
        sa.Column("ym_campaign_id", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sku", name=op.f("pk_stock_products")),
        sa.UniqueConstraint("ozon_offer_id", name=op.f("uq_stock_products_ozon_offer_id")),
        sa.UniqueConstraint("wb_chrt_id", name=op.f("uq_stock_products_wb_chrt_id")),
        sa.UniqueConstraint("ym_shop_sku", name=op.f("uq_stock_products_ym_shop_sku")),
    )
    op.create_table(
        "stock_order_lines",
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.String(length=100), nullable=False),
        sa.Column("sku", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ref", sa.String(length=100), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "marketplace", "order_id", "sku", name=op.f("pk_stock_order_lines")
        ),
    )
    op.create_index(
        "ix_stock_order_lines_open", "stock_order_lines", ["marketplace", "state"], unique=False
    )
    op.create_table(
        "stock_returns",
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("return_id", sa.String(length=100), nullable=False),
        sa.Column("sku", sa.String(length=100), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("marketplace", "return_id", "sku", name=op.f("pk_stock_returns")),
    )
    op.create_table(
        "stock_push_items",
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("sku", sa.String(length=100), nullable=False),
        sa.Column("target", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("pushed_value", sa.Integer(), nullable=True),
        sa.Column("pushed_version", sa.Integer(), nullable=False),
        sa.Column("pushed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("error_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("marketplace", "sku", name=op.f("pk_stock_push_items")),
    )
    op.create_index(
        "ix_stock_push_items_pending",
        "stock_push_items",
        ["marketplace", "pending", "sku"],
        unique=False,
    )
    op.create_table(
        "stock_schedules",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("chain", sa.String(length=36), nullable=False),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_stock_schedules")),
    )
    op.create_table(
        "stock_problems",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stock_problems")),
    )
    op.create_table(
        "stock_marketplace_cache",
        sa.Column("marketplace", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "marketplace", "kind", "key", name=op.f("pk_stock_marketplace_cache")
        ),
    )


def downgrade() -> None:
    op.drop_table("stock_marketplace_cache")
    op.drop_table("stock_problems")
    op.drop_table("stock_schedules")
    op.drop_index("ix_stock_push_items_pending", table_name="stock_push_items")
    op.drop_table("stock_push_items")
    op.drop_table("stock_returns")
    op.drop_index("ix_stock_order_lines_open", table_name="stock_order_lines")
    op.drop_table("stock_order_lines")
    op.drop_table("stock_products")
