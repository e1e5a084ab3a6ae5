"""Team projects: create, open and migrate a Sortlab project held in a PostgreSQL database.

The database itself is made by whoever runs the server (``createdb sortlab_bins``); Sortlab creates
its tables in it with the same Alembic migrations as a file project. Migrations run in one
transaction (PostgreSQL's DDL is transactional, so a failed upgrade leaves the old format whole, which
is what the file project's backup copy is for) under an advisory lock, so two clients opening an
old-format project at once upgrade it once.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator

from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from storage.backends import FLOAT32_AT_SQL, make_pg_engine, parse_database_url, shown_url
from storage.errors import NewerProjectError, NotAProjectError, PermissionDeniedError, ProjectError
from storage.project import APP_MARKER, Project, _alembic_config, app_version, head_revision, known_revisions

MIGRATION_LOCK = 0x50A7_1AB0  # pg_advisory_xact_lock key held while migrating


def _connect(url_text: str, password: str | None) -> tuple[Engine, str, str]:
    url = parse_database_url(url_text)
    engine = make_pg_engine(url, password)
    try:
        with engine.connect() as connection:
            actor = connection.execute(text("SELECT current_user")).scalar_one()
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ProjectError(f"Cannot connect to {shown_url(url)}: {reason}") from exc
    return engine, shown_url(url), actor


def _state(connection: Connection) -> tuple[bool, str | None]:
    """(holds a Sortlab project, its Alembic revision); raises NotAProjectError for other databases."""
    tables = connection.execute(text(
        "SELECT to_regclass('project_meta') IS NOT NULL, to_regclass('alembic_version') IS NOT NULL, "
        "(SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema())")).one()
    has_meta, has_version, count = tables
    if not has_meta and not has_version:
        if count:
            raise NotAProjectError("The database holds other tables, not a Sortlab project.")
        return False, None
    if not (has_meta and has_version):
        raise NotAProjectError("The database is not a Sortlab project.")
    marker = connection.execute(text("SELECT value FROM project_meta WHERE key = 'app'")).scalar()
    if marker != APP_MARKER:
        raise NotAProjectError("The database is not a Sortlab project.")
    return True, connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _migrate(connection: Connection, revision: str) -> None:
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    config = _alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
    connection.exec_driver_sql(FLOAT32_AT_SQL)


def create_database_project(url_text: str, *, revision: str = "head", password: str | None = None) -> Project:
    """Create Sortlab's tables in an empty database (made beforehand with ``createdb``)."""
    engine, location, actor = _connect(url_text, password)
    try:
        with engine.begin() as connection:
            exists, _ = _state(connection)
            if exists:
                raise ProjectError(f"{location} already holds a Sortlab project; open it instead.")
            _migrate(connection, revision)
            connection.execute(
                text("INSERT INTO project_meta (key, value) VALUES ('app', :app), ('created_by_version', :version)"),
                {"app": APP_MARKER, "version": app_version()},
            )
    except DBAPIError as exc:
        engine.dispose()
        raise _refused(exc, f"Cannot create the project in {location}") from exc
    except Exception:
        engine.dispose()
        raise
    return Project(None, engine, location=location, database_name=engine.url.database, actor=actor)


def open_database_project(url_text: str, *, create: bool = False, password: str | None = None) -> Project:
    """Open a team project, upgrading its format if an older Sortlab made it (owners only)."""
    engine, location, actor = _connect(url_text, password)
    try:
        with engine.connect() as connection:
            exists, revision = _state(connection)
            connection.rollback()
        if not exists:
            if not create:
                raise ProjectError(f"{location} holds no Sortlab project yet (import images into it to start one).")
            engine.dispose()
            return create_database_project(url_text, password=password)
        if revision not in known_revisions():
            raise NewerProjectError(
                f"{location} was made by a newer version of Sortlab (format {revision}); please update Sortlab.")
        if revision != head_revision():
            with engine.begin() as connection:
                _migrate(connection, "head")
    except DBAPIError as exc:
        engine.dispose()
        raise _refused(exc, f"Cannot open {location}") from exc
    except Exception:
        engine.dispose()
        raise
    return Project(None, engine, location=location, database_name=engine.url.database, actor=actor)


def _refused(exc: DBAPIError, what: str) -> ProjectError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    if getattr(exc.orig, "sqlstate", None) == "42501":
        return PermissionDeniedError(f"{what}: your database role may not do this ({reason}).")
    return ProjectError(f"{what}: {reason}")


def clear_database_error(project: Project, exc: DBAPIError) -> ProjectError | None:
    """A one-line message for a change the database refused for the user's role (None: not that)."""
    if getattr(exc.orig, "sqlstate", None) != "42501":  # insufficient_privilege
        return None
    reason = str(exc.orig).strip().splitlines()[0]
    return PermissionDeniedError(
        f"The team project {project.name} refused this: your role ({project.actor}) may not do it "
        f"({reason}). Ask the project's owner for access."
    )


# -- one training job per project ------------------------------------------------------------------

TRAINING_LOCK = 0x50A7_7EA1  # pg_advisory_lock key held (on its own connection) while a model trains


class TrainingBusyError(ProjectError):
    """Another client is training this project's model right now."""


def _training_holder(connection) -> str:
    holder = connection.execute(text(
        "SELECT a.usename FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = :low AND l.classid = :high"),
        {"low": TRAINING_LOCK & 0xFFFFFFFF, "high": TRAINING_LOCK >> 32}).scalar()
    return holder or "another client"


@contextlib.contextmanager
def training_lock(project: Project) -> Iterator[None]:
    """Held while one model trains: across every client of a team project (a session-level advisory lock on
    a connection of its own, released when training ends or the client dies), across processes for a
    project file (an flock on the file). A second trainer gets TrainingBusyError naming who trains."""
    if project.is_database:
        with project.engine.connect() as connection:
            got = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": TRAINING_LOCK}).scalar()
            connection.commit()
            if not got:
                holder = _training_holder(connection)
                raise TrainingBusyError(
                    f"{project.name} is being trained by {holder}; you will get the new model when it lands.")
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": TRAINING_LOCK})
                connection.commit()
        return
    with open(project.path, "rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise TrainingBusyError(
                f"{project.name} is being trained by another Sortlab window or command; "
                "you will get the new model when it lands.") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def without_teammates_changes(session, project: Project, states: list) -> list:
    """Undo in a team project undoes only your own action: the label states (``catalog.LabelState``) of
    images whose last change was made by someone else since are left out (their label stays). Call in
    the write transaction, after the images are locked (``backends.lock_images_for_labeling``)."""
    if not project.is_database or not states:
        return states
    rows = session.execute(text(
        "SELECT DISTINCT ON (image_id) image_id, actor FROM label_events WHERE image_id = ANY(:ids) "
        "ORDER BY image_id, id DESC"), {"ids": [int(s.image_id) for s in states]}).all()
    theirs = {image_id for image_id, actor in rows if actor != project.actor}
    return [state for state in states if state.image_id not in theirs]
