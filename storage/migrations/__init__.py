"""Alembic migrations for the project file; run programmatically by storage.project."""
