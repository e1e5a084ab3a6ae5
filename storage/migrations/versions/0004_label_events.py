"""Label history: one row per change of an image's label (who, what, when), for "labels as they
were at ..." and team projects' history.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=True),
        sa.Column("previous_class_id", sa.Integer(), nullable=True),
        sa.Column("origin", sa.String(24), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False, server_default=""),
        sa.Column("at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_label_events_image_at", "label_events", ["image_id", "at"])
    op.create_index("ix_label_events_at", "label_events", ["at"])


def downgrade() -> None:
    op.drop_table("label_events")
