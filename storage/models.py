"""SQLAlchemy 2.0 typed models for a Sortlab project file.

Everything a project knows lives in one SQLite file: images (bytes and thumbnails), classes,
labels, cached deep features, trained model versions, training runs and predictions.
Weights and vectors are stored as raw float32 bytes or safetensors blobs, never pickle.

Schema changes must go through a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class ProjectMeta(Base):
    """Key/value facts about the project (name, creating Sortlab version)."""

    __tablename__ = "project_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Image(Base):
    """One imported image: normalized RGB bytes (max side bounded) plus a small thumbnail."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    original_name: Mapped[str] = mapped_column(Text)
    original_path: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(255), default="", index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    original_format: Mapped[str] = mapped_column(String(16))
    imported_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    thumbnail: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    # Train/validation assignment: 'train' or 'val'; pinned means the user chose it.
    split: Mapped[str] = mapped_column(String(8), default="train", index=True)
    split_pinned: Mapped[bool] = mapped_column(Boolean, default=False)

    label: Mapped[Label | None] = relationship(back_populates="image", uselist=False, passive_deletes=True)


class ImageClass(Base):
    """A class the user sorts images into."""

    __tablename__ = "classes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    color: Mapped[str] = mapped_column(String(9))  # '#rrggbb'
    position: Mapped[int] = mapped_column(Integer, default=0)
    shortcut: Mapped[str | None] = mapped_column(String(1), nullable=True)


class Label(Base):
    """At most one label per image; origin says who set it ('manual', 'suggestion', 'import').

    ``reviewed_at``: when the user kept this label after the review queue questioned it (None: not
    reviewed). ``twins_checked``: the leak guard has compared this image with the other labeled ones.
    A new label is a new row, so a changed label is neither reviewed nor checked.
    """

    __tablename__ = "labels"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id", ondelete="CASCADE"), index=True)
    labeled_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    origin: Mapped[str] = mapped_column(String(16), default="manual")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True, default=None)
    twins_checked: Mapped[bool] = mapped_column(Boolean, default=False)

    image: Mapped[Image] = relationship(back_populates="label")


class FeatureSet(Base):
    """One (backbone, layer) pair whose vectors are cached for images."""

    __tablename__ = "feature_sets"
    __table_args__ = (UniqueConstraint("backbone", "layer"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    backbone: Mapped[str] = mapped_column(String(64))
    layer: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Feature(Base):
    """A cached feature vector (float32 little-endian bytes) of one image in one feature set."""

    __tablename__ = "features"
    feature_set_id: Mapped[int] = mapped_column(
        ForeignKey("feature_sets.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class ModelVersion(Base):
    """A trained classifier: parameters, class order, metrics, and weights as safetensors bytes."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    method: Mapped[str] = mapped_column(String(32))
    backbone: Mapped[str] = mapped_column(String(64))
    layer: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    class_names: Mapped[list[Any]] = mapped_column(JSON, default=list)  # output order
    class_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # same order, ids in `classes`
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    n_labeled: Mapped[int] = mapped_column(Integer, default=0)


class TrainingRun(Base):
    """One training job: status and per-epoch curves (list of dicts), linked to its model when done."""

    __tablename__ = "training_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True
    )
    method: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|done|cancelled|failed
    curves: Mapped[list[Any]] = mapped_column(JSON, default=list)
    message: Mapped[str] = mapped_column(Text, default="")


class Prediction(Base):
    """A model version's prediction for one image (labeled or not)."""

    __tablename__ = "predictions"
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    class_index: Mapped[int] = mapped_column(Integer)  # index into ModelVersion.class_names
    class_id: Mapped[int | None] = mapped_column(
        ForeignKey("classes.id", ondelete="SET NULL"), nullable=True, index=True
    )
    probability: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)  # top-1 minus top-2 probability
    probabilities: Mapped[bytes] = mapped_column(LargeBinary)  # float32 per class
    out_of_fold: Mapped[bool] = mapped_column(Boolean, default=False)  # cross-validated for labeled images


class NearDuplicate(Base):
    """Two labeled images whose features are nearly the same (cosine similarity at or above the
    leak guard's threshold, in the feature space named in ``project_meta['near_duplicate_space']``);
    ``image_a < image_b``. The train/validation split keeps them on one side."""

    __tablename__ = "near_duplicates"
    image_a: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    image_b: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    similarity: Mapped[float] = mapped_column(Float)


class OutlierFlag(Base):
    """An image that looked like nothing else of its class or of the project at the last outlier check;
    ``reasons`` is a JSON list of sentences."""

    __tablename__ = "outliers"
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    score: Mapped[float] = mapped_column(Float, index=True)
    reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)


class LabelEvent(Base):
    """One change of one image's label: who (``actor``), what (``class_id``; None = label removed,
    ``previous_class_id``; None = had none) and when (``at``, naive UTC like every stored time).
    ``origin`` says what made it: 'manual', 'suggestion', 'import', 'undo', 'class removed', 'as of'.
    Class ids carry no foreign key: the history outlives a removed class. See ``storage.label_history``."""

    __tablename__ = "label_events"
    __table_args__ = (Index("ix_label_events_image_at", "image_id", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    class_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    previous_class_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    origin: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(255), default="")
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
