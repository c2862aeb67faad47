"""files: uploads, chunks, refer keys, events, comments, recommendations, violation types

Revision ID: files_0001
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "files_0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("files",)
depends_on: str | Sequence[str] | None = None


def _at(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        _at("stored_at", nullable=True),
        sa.Column("refer_key", sa.String(length=64), nullable=True),
        sa.Column("previous_refer_key", sa.String(length=64), nullable=True),
        sa.Column("refer_generation", sa.Integer(), nullable=False),
        _at("refer_started_at", nullable=True),
        _at("refer_expires_at", nullable=True),
        _at("refer_next_at", nullable=True),
        sa.Column("refer_stopped", sa.String(length=16), nullable=True),
        sa.Column("result_size", sa.BigInteger(), nullable=True),
        sa.Column("result_content_type", sa.String(length=127), nullable=True),
        _at("result_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
        sa.UniqueConstraint("refer_key", name=op.f("uq_files_refer_key")),
    )
    op.create_index(
        op.f("ix_files_previous_refer_key"), "files", ["previous_refer_key"], unique=False
    )
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        _at("received_at"),
        sa.ForeignKeyConstraint(
            ["file_id"], ["files.id"], name=op.f("fk_file_chunks_file_id_files"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("file_id", "index", name=op.f("pk_file_chunks")),
    )
    op.create_table(
        "file_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_events")),
    )
    op.create_index("ix_file_events_file_id_id", "file_events", ["file_id", "id"], unique=False)
    op.create_table(
        "file_comments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("file_id", sa.String(length=36), nullable=False),
        sa.Column("author", sa.String(length=8), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("violation_code", sa.String(length=64), nullable=True),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_file_comments_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_file_comments")),
    )
    op.create_index("ix_file_comments_file_id_id", "file_comments", ["file_id", "id"], unique=False)
    op.create_table(
        "file_recommendations",
        sa.Column("file_id", sa.String(length=36), nullable=False),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("ai_text", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("violation_codes", sa.JSON(), nullable=False),
        sa.Column("comments", sa.Integer(), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
            name=op.f("fk_file_recommendations_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_file_recommendations")),
    )
    op.create_table(
        "violation_types",
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_violation_types")),
    )


def downgrade() -> None:
    op.drop_table("violation_types")
    op.drop_table("file_recommendations")
    op.drop_index("ix_file_comments_file_id_id", table_name="file_comments")
    op.drop_table("file_comments")
    op.drop_index("ix_file_events_file_id_id", table_name="file_events")
    op.drop_table("file_events")
    op.drop_table("file_chunks")
    op.drop_index(op.f("ix_files_previous_refer_key"), table_name="files")
    op.drop_table("files")
