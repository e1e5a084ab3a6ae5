"""First project format: images, classes and labels.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "project_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("original_name", sa.Text(), nullable=False),
        sa.Column("original_path", sa.Text(), nullable=False),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("original_format", sa.String(16), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=False),
    )
    op.create_index("ix_images_content_hash", "images", ["content_hash"], unique=True)
    op.create_index("ix_images_source", "images", ["source"])
    op.create_table(
        "classes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("color", sa.String(9), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("shortcut", sa.String(1), nullable=True),
    )
    op.create_table(
        "labels",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("class_id", sa.Integer(), sa.ForeignKey("classes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("labeled_at", sa.DateTime(), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
    )
    op.create_index("ix_labels_class_id", "labels", ["class_id"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("classes")
    op.drop_table("images")
    op.drop_table("project_meta")
