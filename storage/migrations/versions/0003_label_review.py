"""Trusting labels: reviewed and twin-checked marks on labels, near-duplicate pairs, outlier flags.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("labels") as batch:
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("twins_checked", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "near_duplicates",
        sa.Column("image_a", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_b", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("similarity", sa.Float(), nullable=False),
    )
    op.create_index("ix_near_duplicates_image_b", "near_duplicates", ["image_b"])
    op.create_table(
        "outliers",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
    )
    op.create_index("ix_outliers_score", "outliers", ["score"])


def downgrade() -> None:
    op.drop_table("outliers")
    op.drop_table("near_duplicates")
    with op.batch_alter_table("labels") as batch:
        batch.drop_column("twins_checked")
        batch.drop_column("reviewed_at")
