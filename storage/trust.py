"""A project file from someone else is untrusted input: what Sortlab checks before it opens one.

A ``.sortlab`` file is a SQLite database, and a crafted one can carry triggers that run on the
recipient's ordinary writes (a trigger on ``labels`` deleting every image), views shadowing tables,
virtual tables, or damaged pages. Before a project file is opened:

- every connection runs with ``PRAGMA trusted_schema=OFF`` (functions with side effects and virtual
  tables cannot be used from the schema) and with SQLite's defensive mode: ``setconfig`` on Python
  3.12+, and on 3.11 an authorizer that refuses what defensive mode refuses (``writable_schema``,
  writing ``schema_version``, ``journal_mode=OFF``, ``sqlite_dbpage``) plus any statement run by a
  trigger or view Sortlab's migrations did not make;
- the schema (``sqlite_master``) is compared with the schema the migrations create at the file's
  revision (built once per revision in a scratch database): any table, index, trigger or view Sortlab
  did not make, or a table changed from what Sortlab made, refuses the file with one clear message;
- ``PRAGMA quick_check`` runs the first time this computer sees the file (remembered by path, size and
  modification time in the user's state folder, refreshed when Sortlab closes the project), so a
  damaged page layout is refused before anything reads it.

``storage.trust_check`` builds ``sortlab check``'s report and the backup-first ``--strip-foreign`` repair;
``storage.trust_blobs`` bounds what one stored item may make Sortlab allocate. PostgreSQL team projects
are not files and skip all of this.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.errors import ProjectError

STATE_ENV = "SORTLAB_CACHE_DIR"  # tests point it at a temp folder (the same override as the ONNX cache)
SEEN_FILE = "checked-projects.json"
SEEN_LIMIT = 500  # files remembered; the oldest are forgotten first
# SQLite's own bookkeeping tables may appear in any database (AUTOINCREMENT, ANALYZE).
SQLITE_INTERNAL_TABLES = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4")
# Authorizer action codes (sqlite3.h); the module exports only some of them on 3.11.
_SQLITE_DELETE, _SQLITE_INSERT, _SQLITE_PRAGMA, _SQLITE_READ, _SQLITE_UPDATE = 9, 18, 19, 20, 23
_SQLITE_OK, _SQLITE_DENY = 0, 1
_DEFENSIVE_DBCONFIG = 1010  # SQLITE_DBCONFIG_DEFENSIVE


class UntrustedProjectError(ProjectError):
    """The file holds database objects Sortlab did not make (triggers, views, foreign tables)."""


class DamagedProjectError(ProjectError):
    """SQLite found the file's pages damaged."""


@dataclass(frozen=True)
class SchemaFinding:
    """One schema object that differs from what the migrations make. ``problem``: 'foreign' (Sortlab did
    not make it), 'changed' (Sortlab made one by that name, but not like this) or 'missing'."""

    problem: str
    kind: str  # table, index, trigger, view
    name: str
    table: str

    def describe(self) -> str:
        on = f" on {self.table}" if self.kind in ("trigger", "index") and self.table else ""
        return {
            "foreign": f"{self.kind} '{self.name}'{on}",
            "changed": f"changed {self.kind} '{self.name}'",
            "missing": f"missing {self.kind} '{self.name}'",
        }[self.problem]


# -- connections ------------------------------------------------------------------------------------

def harden(connection: sqlite3.Connection) -> None:
    """Untrusted-schema settings for one connection (call right after connecting)."""
    connection.execute("PRAGMA trusted_schema=OFF")
    setconfig = getattr(connection, "setconfig", None)
    if setconfig is not None:  # Python 3.12+
        setconfig(getattr(sqlite3, "SQLITE_DBCONFIG_DEFENSIVE", _DEFENSIVE_DBCONFIG), True)
    connection.set_authorizer(_authorize)


def _authorize(action: int, arg1: str | None, arg2: str | None, _database: str | None,
               source: str | None) -> int:
    """Defensive mode's refusals, and no statement run by a trigger or view Sortlab did not make."""
    if source is not None and source not in _allowed_code_objects():
        return _SQLITE_DENY
    if action == _SQLITE_PRAGMA:
        pragma = (arg1 or "").lower()
        if pragma == "writable_schema" or (pragma == "schema_version" and arg2 is not None):
            return _SQLITE_DENY
        if pragma == "journal_mode" and (arg2 or "").lower() == "off":
            return _SQLITE_DENY
    elif action in (_SQLITE_READ, _SQLITE_INSERT, _SQLITE_UPDATE, _SQLITE_DELETE):
        if (arg1 or "").lower() == "sqlite_dbpage":  # the schema tables need writable_schema, refused above
            return _SQLITE_DENY
    return _SQLITE_OK


@functools.lru_cache(maxsize=1)
def _allowed_code_objects() -> frozenset[str]:
    """Triggers and views the migrations make (none today); computed only if one ever runs."""
    from storage.project import head_revision

    return frozenset(obj.name for obj in expected_schema(head_revision()).values()
                     if obj.kind in ("trigger", "view"))


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A hardened read-only connection to a project file (nothing in it can write)."""
    connection = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        harden(connection)
        yield connection
    finally:
        connection.close()


# -- the schema -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SchemaObject:
    kind: str
    name: str
    table: str
    shape: tuple  # what must match: columns and keys of a table, key columns of an index, SQL of the rest


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _normalized_sql(sql: str | None) -> str:
    return " ".join((sql or "").replace('"', "").replace("`", "").split()).lower()


def _table_shape(connection: sqlite3.Connection, name: str, sql: str | None) -> tuple:
    text = _normalized_sql(sql)
    if text.startswith("create virtual"):
        return ("virtual", text)
    columns = tuple(
        (row[1], (row[2] or "").upper(), row[3], row[4], row[5], row[6])
        for row in connection.execute(f"PRAGMA table_xinfo({_quoted(name)})")
    )
    keys = tuple(sorted(
        (row[2], row[3] or "", row[4] or "", row[5], row[6])
        for row in connection.execute(f"PRAGMA foreign_key_list({_quoted(name)})")
    ))
    # Constraints a changed table could smuggle in, which table_xinfo does not show.
    extras = tuple(word for word in ("check", " as (", "generated", "without rowid", "strict") if word in text)
    return ("table", columns, keys, extras)


def _index_shape(connection: sqlite3.Connection, name: str, table: str, sql: str | None) -> tuple:
    columns = tuple(
        (row[1], row[2], row[3], row[4], row[5])
        for row in connection.execute(f"PRAGMA index_xinfo({_quoted(name)})")
    )
    text = _normalized_sql(sql)
    return ("index", table, columns, text.startswith("create unique"), " where " in text)


def schema_of(connection: sqlite3.Connection) -> dict[tuple[str, str], SchemaObject]:
    """Every object in ``sqlite_master``, by (kind, name), with what must match."""
    found: dict[tuple[str, str], SchemaObject] = {}
    rows = connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    for kind, name, table, sql in rows:
        if kind == "table" and name in SQLITE_INTERNAL_TABLES:
            continue
        if kind == "table":
            shape = _table_shape(connection, name, sql)
        elif kind == "index":
            shape = _index_shape(connection, name, table, sql)
        else:
            shape = (kind, _normalized_sql(sql))
        found[(kind, name)] = SchemaObject(kind, name, table, shape)
    return found


def compare_schema(found: dict[tuple[str, str], SchemaObject],
                   expected: dict[tuple[str, str], SchemaObject]) -> list[SchemaFinding]:
    findings = []
    for key, obj in sorted(found.items()):
        if key not in expected:
            findings.append(SchemaFinding("foreign", obj.kind, obj.name, obj.table))
        elif obj.shape != expected[key].shape:
            findings.append(SchemaFinding("changed", obj.kind, obj.name, obj.table))
    findings.extend(SchemaFinding("missing", obj.kind, obj.name, obj.table)
                    for key, obj in sorted(expected.items()) if key not in found)
    return findings


def _freeze(value):
    return tuple(_freeze(item) for item in value) if isinstance(value, list | tuple) else value


_EXPECTED_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def expected_schema(revision: str) -> dict[tuple[str, str], SchemaObject]:
    """The schema the migrations make at ``revision``, built once in a scratch database (and kept in the
    state folder, keyed by the migration sources, so later starts skip the build)."""
    with _EXPECTED_LOCK:
        cache = state_dir() / f"schema-{revision}-{_migrations_fingerprint()}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            return {(obj.kind, obj.name): obj for obj in (
                SchemaObject(item["kind"], item["name"], item["table"], _freeze(item["shape"]))
                for item in json.loads(cache.read_text()))}
        schema = _build_expected(revision)
        with contextlib.suppress(OSError):
            _write_atomically(cache, json.dumps([obj.__dict__ for obj in schema.values()]))
        return schema


def _build_expected(revision: str) -> dict[tuple[str, str], SchemaObject]:
    from sqlalchemy import create_engine

    from storage.project import _migrate  # storage.project imports this module

    with tempfile.TemporaryDirectory(prefix="sortlab-schema-") as folder:
        path = Path(folder) / "expected.sortlab"
        engine = create_engine(f"sqlite:///{path}")
        try:
            _migrate(engine, revision)
        finally:
            engine.dispose()
        connection = sqlite3.connect(str(path))
        try:
            return schema_of(connection)
        finally:
            connection.close()


@functools.lru_cache(maxsize=1)
def _migrations_fingerprint() -> str:
    import hashlib

    from storage.project import MIGRATIONS_DIR

    digest = hashlib.sha256()
    for source in sorted((MIGRATIONS_DIR / "versions").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(sqlite3.sqlite_version.encode())  # the PRAGMAs describing the schema come from SQLite
    return digest.hexdigest()[:16]


# -- checks before opening ----------------------------------------------------------------------------

def schema_findings(connection: sqlite3.Connection, revision: str) -> list[SchemaFinding]:
    return compare_schema(schema_of(connection), expected_schema(revision))


def refusal_message(name: str, findings: list[SchemaFinding]) -> str:
    shown = ", ".join(finding.describe() for finding in findings[:4])
    more = f" and {len(findings) - 4} more" if len(findings) > 4 else ""
    return (f"{name} was not opened: it contains database objects Sortlab did not make ({shown}{more}), "
            f"which could change or delete your data. Run 'sortlab check {name} --strip-foreign' "
            "to remove them (a backup is kept).")


def damaged_message(name: str, problem: str) -> str:
    problem = " ".join(problem.split())[:160]
    return (f"{name} is damaged ({problem}), so it was not opened. Restore it from a backup or ask "
            "for a fresh copy; 'sortlab check' shows the details.")


def quick_check(connection: sqlite3.Connection, *, full: bool = False, limit: int = 20) -> list[str]:
    """SQLite's page-level check: the problems found, [] when the file is sound."""
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = [row[0] for row in connection.execute(f"PRAGMA {pragma}({int(limit)})")]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    if rows == ["ok"]:
        return []
    lines = [line.strip() for row in rows for line in str(row).splitlines()]
    return [line for line in lines if line and not line.startswith("*** in database")] or ["damaged"]


def vet_project_file(path: Path, revision: str | None) -> None:
    """Refuse a project file Sortlab should not open: damaged pages (checked on the first open on this
    computer) or schema objects the migrations did not make. Reads only; nothing in the file runs."""
    path = Path(path)
    try:
        with read_only(path) as connection:
            if not is_known_file(path):
                problems = quick_check(connection)
                if problems:
                    raise DamagedProjectError(damaged_message(path.name, problems[0]))
            findings = schema_findings(connection, revision) if revision else []
    except sqlite3.DatabaseError as exc:
        raise DamagedProjectError(damaged_message(path.name, str(exc))) from exc
    if findings:
        raise UntrustedProjectError(refusal_message(path.name, findings))
    remember_file(path)


# -- files this computer has checked --------------------------------------------------------------------

def state_dir() -> Path:
    override = os.environ.get(STATE_ENV)
    if override:
        return Path(override) / "state"
    from platformdirs import user_state_dir

    return Path(user_state_dir("sortlab"))


_SEEN_LOCK = threading.Lock()


def _signature(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _seen() -> dict[str, list[int]]:
    try:
        data = json.loads((state_dir() / SEEN_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_known_file(path: Path) -> bool:
    """Whether this computer checked (or wrote) the file as it is now: same path, size and mtime."""
    signature = _signature(path)
    return signature is not None and _seen().get(str(Path(path).resolve())) == signature


def remember_file(path: Path) -> None:
    """Note the file as checked in its present state (after a check, and when Sortlab closes it)."""
    signature = _signature(Path(path))
    if signature is None:
        return
    key = str(Path(path).resolve())
    with _SEEN_LOCK:
        seen = _seen()
        if seen.get(key) == signature:
            return
        seen.pop(key, None)
        seen[key] = signature
        while len(seen) > SEEN_LIMIT:
            seen.pop(next(iter(seen)))
        with contextlib.suppress(OSError):
            _write_atomically(state_dir() / SEEN_FILE, json.dumps(seen))


def forget_file(path: Path) -> None:
    key = str(Path(path).resolve())
    with _SEEN_LOCK:
        seen = _seen()
        if seen.pop(key, None) is not None:
            with contextlib.suppress(OSError):
                _write_atomically(state_dir() / SEEN_FILE, json.dumps(seen))


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
