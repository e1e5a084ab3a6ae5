"""Open, create and migrate a Sortlab project: a file (one SQLite database, suffix ``.sortlab``) or,
for a team, a PostgreSQL database named by its URL (``storage.backends``, ``storage.team_store``).

Threading rule: the ``Project`` (and its SQLAlchemy Engine) may be shared between threads, but each
thread opens its own short-lived session with ``project.session()`` (reads) or ``project.writing()``
(writes, which take SQLite's write lock up front with BEGIN IMMEDIATE so two writers wait for each
other instead of failing with "database is locked"). ORM objects never leave the ``with`` block.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError
from sqlalchemy.orm import Session, sessionmaker

from storage.errors import (
    DiskFullError,
    NewerProjectError,
    NotAProjectError,
    ProjectError,
    ReadOnlyProjectError,
)
from storage import trust
from storage.file_writes import checkpoint_if_due, write_turn
from storage.models import ProjectMeta

if TYPE_CHECKING:  # alembic itself is imported where it is used: 0.3 s less of every start-up
    from alembic.config import Config

SUFFIX = ".sortlab"
APP_MARKER = "sortlab"
SQLITE_HEADER = b"SQLite format 3\x00"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def float32_at(blob: bytes | None, index: int | None) -> float | None:
    """SQL function ``float32_at(blob, i)``: the i-th little-endian float32 of a blob (a stored
    prediction's probability of one class), NULL when there is none."""
    if blob is None or index is None or not 0 <= int(index) < len(blob) // 4:
        return None
    return struct.unpack_from("<f", blob, 4 * int(index))[0]


def _make_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # No automatic checkpoint: Project.writing copies the log after a write (storage.file_writes).
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()
        dbapi_connection.create_function("float32_at", 2, float32_at, deterministic=True)
        trust.harden(dbapi_connection)  # trusted_schema=OFF, defensive mode (storage.trust)

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        immediate = connection.get_execution_options().get("sortlab_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _check_is_project_file(path: Path) -> str | None:
    """Return the file's Alembic revision, or raise NotAProjectError with a clear reason."""
    with open(path, "rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise NotAProjectError(f"{path.name} is not a Sortlab project (it is not a database file).")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            trust.harden(connection)
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "project_meta" not in tables or "alembic_version" not in tables:
                raise NotAProjectError(f"{path.name} is a database, but not a Sortlab project.")
            marker = connection.execute("SELECT value FROM project_meta WHERE key='app'").fetchone()
            if not marker or marker[0] != APP_MARKER:
                raise NotAProjectError(f"{path.name} is a database, but not a Sortlab project.")
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise NotAProjectError(f"{path.name} is not a readable Sortlab project ({exc}).") from exc


def backup_path(path: Path, revision: str | None) -> Path:
    return path.with_name(f"{path.name}.before-upgrade-{revision or 'none'}.bak")


def _backup(path: Path, revision: str | None) -> Path:
    """Copy the project with SQLite's online backup API (consistent even with a WAL beside it)."""
    target = backup_path(path, revision)
    source = sqlite3.connect(str(path))
    try:
        destination = sqlite3.connect(str(target))
        with destination:
            source.backup(destination)
        destination.close()
    finally:
        source.close()
    return target


ACTOR_ENV = "SORTLAB_USER"


def default_actor() -> str:
    """Who labels in a file project: the name the user gave (``SORTLAB_USER``), else the OS login."""
    try:
        return os.environ.get(ACTOR_ENV) or getpass.getuser()
    except Exception:  # no login name in this environment (a container, a service)
        return ""


class Project:
    """An open project. Cheap to share between threads; sessions are per thread.

    ``path`` is the project file (None for a database project), ``location`` what Sortlab shows and
    keys caches by (the file path, or the database URL without its password), ``actor`` who makes the
    changes recorded in the label history (the database user for a team project).
    """

    def __init__(self, path: Path | None, engine: Engine, *, location: str | None = None,
                 database_name: str | None = None, actor: str | None = None):
        self.path = path
        self.engine = engine
        self.location = location if location is not None else str(path)
        self.database_name = database_name
        # Who the label history names for this session's label writes (settable; team projects set
        # the database user). See storage.label_history.
        self.actor: str = actor or default_actor()
        self._read_sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            bind=engine.execution_options(sortlab_write=True), expire_on_commit=False
        )

    @property
    def name(self) -> str:
        return self.database_name if self.path is None else self.path.stem

    @property
    def is_database(self) -> bool:
        """A team project in a database server (PostgreSQL), not a file."""
        return self.engine.dialect.name != "sqlite"

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A read session (it may write too, but prefer ``writing()`` for anything that writes).
        In a team project, what the user's role may not read raises PermissionDeniedError."""
        try:
            with self._read_sessions() as session:
                yield session
        except DBAPIError as exc:
            clear = self._clear_database_error(exc)
            if clear is not None:
                raise clear from exc
            raise

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction: committed on success, rolled back on any exception.

        A full disk or a file that became read-only raises DiskFullError / ReadOnlyProjectError
        with a message for the user (SQLite's own text carries the SQL and its parameters).
        """
        try:
            with write_turn(self.path), self._write_sessions() as session:
                with session.begin():
                    yield session
            checkpoint_if_due(self.engine, self.path)
        except (SQLAlchemyOperationalError, sqlite3.OperationalError) as exc:
            clear = _clear_write_error(self.path, exc) if self.path is not None else None
            if clear is None:
                raise
            raise clear from exc
        except DBAPIError as exc:
            clear = self._clear_database_error(exc)
            if clear is not None:
                raise clear from exc
            raise

    def _clear_database_error(self, exc: DBAPIError) -> Exception | None:
        """A team project's database error in words for the user (e.g. what the role may not do);
        None for a file project or an error with nothing clearer to say."""
        if self.path is not None:
            return None
        from storage.team_store import clear_database_error

        return clear_database_error(self, exc)

    def close(self) -> None:
        self.engine.dispose()
        if self.path is not None:
            trust.remember_file(self.path)  # Sortlab's own writes need no first-open check next time

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _clear_write_error(path: Path, exc: Exception) -> ProjectError | None:
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "database or disk is full" in text:
        return DiskFullError(
            f"The disk holding {path.name} is full, so the last change was not saved. "
            "Free some space and try again; everything saved before is kept."
        )
    if "readonly database" in text:
        return ReadOnlyProjectError(
            f"{path.name} can no longer be written (it or its folder became read-only), so the last change "
            "was not saved. Everything saved before is kept; save a copy elsewhere to go on working."
        )
    return None


def create_project(path: str | os.PathLike, *, revision: str = "head", password: str | None = None) -> Project:
    """Create a new, empty project file, or a project in an empty database named by a URL.
    ``revision`` exists so tests can make old-format projects."""
    from storage.backends import is_database_url

    if is_database_url(path):
        from storage.team_store import create_database_project

        return create_database_project(str(path), revision=revision, password=password)
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        raise ProjectError(f"{path} already exists; open it instead.")
    if not path.parent.exists():
        raise ProjectError(f"Folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise ReadOnlyProjectError(f"Cannot create {path}: the folder {path.parent} is read-only.")
    engine = _make_engine(path)
    try:
        _migrate(engine, revision)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                "INSERT INTO project_meta (key, value) VALUES ('app', ?), ('created_by_version', ?)",
                (APP_MARKER, app_version()),
            )
    except Exception:
        engine.dispose()
        raise
    return Project(path, engine)


def _migrate(engine: Engine, revision: str) -> None:
    """Upgrade with foreign keys off: SQLite's table rebuilds (batch migrations) would otherwise
    cascade-delete dependent rows. Integrity is checked before the transaction commits."""
    with engine.connect() as connection:
        connection.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            from alembic import command

            with connection.begin():
                config = _alembic_config()
                config.attributes["connection"] = connection
                command.upgrade(config, revision)
                problems = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise ProjectError(f"Upgrading the project left broken references: {problems[:3]}")
        finally:
            connection.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def open_project(path: str | os.PathLike, *, create: bool = False, password: str | None = None) -> Project:
    """Open a project, upgrading its format (after a backup copy) if it was made by an older Sortlab.
    ``path`` may be a database URL (a team project; ``password`` when libpq does not supply one)."""
    from storage.backends import is_database_url

    if is_database_url(path):
        from storage.team_store import open_database_project

        return open_database_project(str(path), create=create, password=password)
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        if create:
            if path.exists():
                path.unlink()
            return create_project(path)
        raise ProjectError(f"Project {path} does not exist.")
    if path.is_dir():
        raise NotAProjectError(f"{path} is a folder, not a Sortlab project file.")
    if not os.access(path, os.R_OK):
        raise ProjectError(f"Cannot read {path}: permission denied.")
    revision = _check_is_project_file(path)
    if revision not in known_revisions():
        raise NewerProjectError(
            f"{path.name} was made by a newer version of Sortlab (format {revision}); "
            "please update Sortlab to open it."
        )
    trust.vet_project_file(path, revision)  # foreign triggers/views/tables, damaged pages: refused
    if not _is_writable(path) or not os.access(path.parent, os.W_OK):
        raise ReadOnlyProjectError(
            f"{path} is read-only. Copy it to a folder you can write to, or change its permissions."
        )
    if revision != head_revision():
        _backup(path, revision)
    engine = _make_engine(path)
    try:
        _migrate(engine, "head")
    except Exception:
        engine.dispose()
        raise
    return Project(path, engine)


def _is_writable(path: Path) -> bool:
    """Honour the file's write bits even for root, who may write anyway: the user meant read-only."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def current_revision(project: Project) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with project.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def project_meta(project: Project) -> dict[str, str]:
    with project.session() as session:
        return {row.key: row.value for row in session.scalars(select(ProjectMeta))}


def app_version() -> str:
    """Sortlab's version (one lookup for the project marker, ``--version`` and exported model cards)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sortlab")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+source"

