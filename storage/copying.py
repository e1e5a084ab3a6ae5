"""Copy a whole project between a file and a database (either way, or file to file): every table of the
schema (images, classes, labels, label history, features, models, predictions, ...) row for row, with
the same ids, in batches that each commit, so an interrupted copy resumes where it stopped.

The destination is marked ``copy_in_progress`` (in ``project_meta``) until the copy has been verified:
per table, the row counts and a SHA-256 over every row in primary-key order match the source's. A
destination that holds another project (no mark, some images) is refused, never merged into.
``copy_project`` is a job in the engine's shape: ``context`` has ``progress(fraction, message)`` and
``check_cancelled()`` (storage needs nothing else from it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import LargeBinary, Table, func, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from storage.errors import ProjectError
from storage.models import Base, Image, ProjectMeta
from storage.project import Project

COPY_MARK = "copy_in_progress"
ROWS_PER_BATCH = 2000
BYTES_PER_BATCH = 32 * 1024 * 1024  # batches of image rows stay around this size


@dataclass
class TableCheck:
    table: str
    rows: int
    sha256: str


@dataclass
class CopyReport:
    source: str
    destination: str
    copied_rows: int = 0  # rows written by this run (a resumed copy skips what was there)
    resumed: bool = False
    tables: list[TableCheck] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "copied_rows": self.copied_rows,
                "resumed": self.resumed, "verified": True,
                "tables": {t.table: {"rows": t.rows, "sha256": t.sha256} for t in self.tables}}


class CopyVerificationError(ProjectError):
    """The copy's contents differ from the source's (counts or checksums)."""


def _tables() -> list[Table]:
    return [table for table in Base.metadata.sorted_tables]


def _meta(project: Project, key: str) -> str | None:
    with project.session() as session:
        return session.scalar(select(ProjectMeta.value).where(ProjectMeta.key == key))


def check_destination(source: Project, destination: Project) -> bool:
    """True when ``destination`` holds an unfinished copy of ``source`` (resume), False when it is empty;
    raises ProjectError when it holds anything else."""
    mark = _meta(destination, COPY_MARK)
    if mark is not None:
        if mark != source.location:
            raise ProjectError(f"{destination.location} holds an unfinished copy of {mark}, not of {source.location}.")
        return True
    with destination.session() as session:
        if session.scalar(select(func.count()).select_from(Image)):
            raise ProjectError(f"{destination.location} already holds a project with images; copy into a new one.")
    return False


def _insert(destination: Project, table: Table):
    dialect = postgresql if destination.engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def _batches(source: Project, table: Table, after: tuple | None) -> Iterator[list[dict]]:
    """The source's rows after primary key ``after``, in key order, a batch at a time."""
    keys = list(table.primary_key.columns)
    binary = any(isinstance(column.type, LargeBinary) for column in table.columns)
    limit = min(64, ROWS_PER_BATCH) if binary else ROWS_PER_BATCH
    while True:
        query = select(table).order_by(*keys).limit(limit)
        if after is not None:
            query = query.where(tuple_(*keys) > tuple_(*after) if len(keys) > 1 else keys[0] > after[0])
        with source.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        if not rows:
            return
        yield rows
        after = tuple(rows[-1][key.name] for key in keys)
        if binary:  # aim each batch at BYTES_PER_BATCH
            size = sum(len(v) for row in rows for v in row.values() if isinstance(v, bytes | bytearray))
            limit = max(1, min(ROWS_PER_BATCH, int(len(rows) * BYTES_PER_BATCH / max(size, 1))))


def _last_key(project: Project, table: Table) -> tuple | None:
    keys = list(table.primary_key.columns)
    with project.engine.connect() as connection:
        row = connection.execute(select(*keys).order_by(*[key.desc() for key in keys]).limit(1)).first()
    return None if row is None else tuple(row)


def _count(project: Project, table: Table) -> int:
    with project.engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(table)).scalar_one()


def _reset_sequences(project: Project) -> None:
    """After rows arrived with their ids, PostgreSQL's serial counters must continue after them."""
    if project.engine.dialect.name != "postgresql":
        return
    with project.engine.begin() as connection:
        for table in _tables():
            keys = list(table.primary_key.columns)
            if len(keys) == 1 and keys[0].autoincrement in (True, "auto") and keys[0].type.python_type is int:
                connection.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{keys[0].name}'), "
                    f"COALESCE((SELECT MAX({keys[0].name}) FROM {table.name}), 0) + 1, false)"))


def copy_project(context, source: Project, destination: Project) -> CopyReport:
    """Copy everything from ``source`` into ``destination`` (empty, or an unfinished copy of it), then verify."""
    resumed = check_destination(source, destination)
    report = CopyReport(source.location, destination.location, resumed=resumed)
    with destination.writing() as session:
        row = session.get(ProjectMeta, COPY_MARK)
        if row is None:
            session.add(ProjectMeta(key=COPY_MARK, value=source.location))
    tables = [table for table in _tables() if table.name != ProjectMeta.__tablename__]
    totals = {table.name: _count(source, table) for table in tables}
    total = max(1, sum(totals.values()))
    done = 0
    for table in tables:
        already = _count(destination, table)
        done += min(already, totals[table.name])
        after = _last_key(destination, table)
        statement = _insert(destination, table)
        for rows in _batches(source, table, after):
            context.check_cancelled()
            with destination.writing() as session:
                session.execute(statement, rows)
            report.copied_rows += len(rows)
            done += len(rows)
            context.progress(min(done / total, 0.95), f"Copied {done:,} of {total:,} rows ({table.name})")
    _copy_meta(source, destination)
    _reset_sequences(destination)
    context.progress(0.96, "Verifying the copy")
    report.tables = verify_copy(source, destination)
    with destination.writing() as session:
        row = session.get(ProjectMeta, COPY_MARK)
        if row is not None:
            session.delete(row)
    context.progress(1.0, f"Copied and verified {sum(t.rows for t in report.tables):,} rows")
    return report


_SKIPPED_META = {"app", COPY_MARK}


def _copy_meta(source: Project, destination: Project) -> None:
    with source.session() as session:
        values = {row.key: row.value for row in session.scalars(select(ProjectMeta)) if row.key not in _SKIPPED_META}
    with destination.writing() as session:
        for key, value in values.items():
            row = session.get(ProjectMeta, key)
            if row is None:
                session.add(ProjectMeta(key=key, value=value))
            else:
                row.value = value


def _canonical(value) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        return b"b" + bytes(value)
    if isinstance(value, dt.datetime):
        return b"t" + value.isoformat().encode()
    if isinstance(value, bool):
        return b"B1" if value else b"B0"
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    if isinstance(value, dict | list):
        return b"j" + json.dumps(value, sort_keys=True).encode()
    return b"v" + repr(value).encode()


def table_checksum(project: Project, table: Table) -> TableCheck:
    """Rows and a SHA-256 over every row of ``table`` in primary-key order (the same on either backend)."""
    digest = hashlib.sha256()
    rows = 0
    for batch in _batches(project, table, None):
        for row in batch:
            for name in sorted(row):
                piece = _canonical(row[name])
                digest.update(name.encode() + b"=" + len(piece).to_bytes(8, "little") + piece)
            rows += 1
    return TableCheck(table.name, rows, digest.hexdigest())


def project_checksums(project: Project) -> list[TableCheck]:
    return [table_checksum(project, table) for table in _tables() if table.name != ProjectMeta.__tablename__]


def verify_copy(source: Project, destination: Project) -> list[TableCheck]:
    expected, found = project_checksums(source), project_checksums(destination)
    wrong = [f"{a.table} ({a.rows} rows, copy {b.rows})" for a, b in zip(expected, found) if a != b]
    if wrong:
        raise CopyVerificationError(f"The copy differs from {source.location} in: {', '.join(wrong)}.")
    return found
