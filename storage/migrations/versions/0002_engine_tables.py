"""Engine tables: train/val split on images, cached features, model versions, runs, predictions.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("split", sa.String(8), nullable=False, server_default="train"))
        batch.add_column(sa.Column("split_pinned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.create_index("ix_images_split", ["split"])
    op.create_table(
        "feature_sets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("layer", sa.String(64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("backbone", "layer"),
    )
    op.create_table(
        "features",
        sa.Column("feature_set_id", sa.Integer(), sa.ForeignKey("feature_sets.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("layer", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("class_ids", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("weights", sa.LargeBinary(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("n_labeled", sa.Integer(), nullable=False),
    )
    op.create_index("ix_model_versions_is_active", "model_versions", ["is_active"])
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_version_id", sa.Integer(),
                  sa.ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("curves", sa.JSON(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("model_version_id", sa.Integer(),
                  sa.ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("class_id", sa.Integer(), sa.ForeignKey("classes.id", ondelete="SET NULL"), nullable=True),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("margin", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.LargeBinary(), nullable=False),
        sa.Column("out_of_fold", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_predictions_class_id", "predictions", ["class_id"])


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("training_runs")
    op.drop_table("model_versions")
    op.drop_table("features")
    op.drop_table("feature_sets")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_split")
        batch.drop_column("split_pinned")
        batch.drop_column("split")
