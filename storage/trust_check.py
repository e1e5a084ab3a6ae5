"""``sortlab check``: what is wrong with a project file, and the backup-first repair ``--strip-foreign``.

The check reads the file through a hardened read-only connection (``storage.trust``), so it works on
files ``open_project`` refuses: it reports SQLite's page check (``quick_check``, or ``integrity_check``
on demand), the schema objects Sortlab did not make (or changed), rows pointing at rows that do not
exist (``foreign_key_check``), and stored items Sortlab will not load (over the size limits, records
SQLite cannot read, model weights that do not match their version), then what ``--strip-foreign``
would fix. The repair first copies the file with SQLite's backup API, then drops the foreign objects
and deletes the orphan rows in one transaction. A damaged file, or one whose own tables were changed or
replaced (a view shadowing a table), it leaves untouched: no repair could make Sortlab open it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storage import trust, trust_blobs
from storage.errors import ProjectError

_DROP_ORDER = {"trigger": 0, "view": 1, "index": 2, "table": 3}


@dataclass
class CheckReport:
    path: str
    revision: str | None
    integrity_check: str  # 'quick_check' or 'integrity_check'
    integrity: list[str] = field(default_factory=list)  # [] = sound
    schema: list[dict] = field(default_factory=list)  # SchemaFinding fields + description
    orphans: dict[str, int] = field(default_factory=dict)  # table -> rows pointing at nothing
    refused: list[str] = field(default_factory=list)  # items Sortlab will not load, with why
    not_checked: list[str] = field(default_factory=list)
    would_fix: list[str] = field(default_factory=list)
    cannot_fix: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    backup: str | None = None

    @property
    def clean(self) -> bool:
        return not (self.integrity or self.schema or self.orphans or self.refused)

    def to_json(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def _revision(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return row[0] if row else None


def _orphans(connection: sqlite3.Connection) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for table, rowid, _parent, _key in connection.execute("PRAGMA foreign_key_check"):
        found.setdefault(table, []).append(rowid)
    return found


def _refused_items(connection: sqlite3.Connection, deep: bool) -> list[str]:
    """Images and model versions Sortlab will not load (what ``storage.trust_blobs`` refuses)."""
    refused = []
    limits = (("image", "data", trust_blobs.MAX_IMAGE_BYTES), ("thumbnail", "thumbnail", trust_blobs.MAX_THUMBNAIL_BYTES))
    ids = [row[0] for row in connection.execute("SELECT id FROM images ORDER BY id")]
    for what, column, limit in limits:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            try:
                rows = connection.execute(f"SELECT id, length({column}) FROM images WHERE id IN ({marks})", chunk).fetchall()
            except sqlite3.DatabaseError:
                rows = []
                for image_id in chunk:
                    try:
                        rows.extend(connection.execute(f"SELECT id, length({column}) FROM images WHERE id=?", (image_id,)))
                    except sqlite3.DatabaseError as exc:
                        refused.append(trust_blobs.Refusal(what, image_id, f"its stored record is damaged ({exc})").message())
            for image_id, size in rows:
                if size is not None and size > limit:
                    refused.append(trust_blobs.Refusal(what, image_id, trust_blobs.size_reason(size, limit)).message())
    if deep:
        refused.extend(_oversized_pictures(connection, ids, refused))
    for version, size, class_names in connection.execute(
            "SELECT id, length(weights), json_array_length(class_names) FROM model_versions ORDER BY id"):
        try:
            if size is not None and size > trust_blobs.MAX_WEIGHTS_BYTES:
                raise trust_blobs.UnusableModelError(trust_blobs.size_reason(size, trust_blobs.MAX_WEIGHTS_BYTES))
            blob = connection.execute("SELECT weights FROM model_versions WHERE id=?", (version,)).fetchone()[0]
            trust_blobs.vet_weights(blob or b"", int(class_names or 0), version)
        except (trust_blobs.UnusableModelError, sqlite3.DatabaseError) as exc:
            refused.append(f"model {version}: {exc}")
    return refused


def _oversized_pictures(connection: sqlite3.Connection, ids: list[int], already: list[str]) -> list[str]:
    """Pictures whose header declares more pixels than Sortlab decodes (reads every stored value)."""
    found = []
    for what, column, limit in (("image", "data", trust_blobs.MAX_IMAGE_PIXELS),
                                ("thumbnail", "thumbnail", trust_blobs.MAX_THUMBNAIL_PIXELS)):
        for image_id in ids:
            if any(line.startswith(f"{what} {image_id} ") for line in already):
                continue
            try:
                (blob,) = connection.execute(f"SELECT {column} FROM images WHERE id=?", (image_id,)).fetchone()
            except sqlite3.DatabaseError:
                continue
            size = trust_blobs.declared_size(blob or b"")
            if size is not None and size[0] * size[1] > limit:
                found.append(trust_blobs.Refusal(
                    what, image_id, f"its header declares {size[0]}x{size[1]} pixels, over the limit of {limit:,}").message())
    return found


def check_project(path: str | Path, *, integrity: bool = False) -> CheckReport:
    """Everything ``sortlab check`` reports about a project file (reads only)."""
    path = Path(path)
    if not path.is_file():
        raise ProjectError(f"Project {path} does not exist.")
    with open(path, "rb") as handle:
        if handle.read(16) != b"SQLite format 3\x00":
            raise ProjectError(f"{path.name} is not a Sortlab project (it is not a database file).")
    pragma = "integrity_check" if integrity else "quick_check"
    with trust.read_only(path) as connection:
        revision = _revision(connection)
        report = CheckReport(str(path), revision, pragma)
        report.integrity = trust.quick_check(connection, full=integrity)
        try:
            findings = trust.schema_findings(connection, revision) if revision else []
        except sqlite3.DatabaseError as exc:
            findings = []
            report.not_checked.append(f"schema ({exc})")
        if revision is None:
            report.not_checked.append("schema (the file records no Sortlab format version)")
        report.schema = [{**asdict(finding), "description": finding.describe()} for finding in findings]
        suspicious = {finding.table for finding in findings if finding.kind in ("table", "view")} | {
            finding.name for finding in findings if finding.kind in ("table", "view")}
        try:
            report.orphans = {table: len(rows) for table, rows in _orphans(connection).items()}
        except sqlite3.DatabaseError as exc:
            report.not_checked.append(f"references between rows ({exc})")
        if suspicious & {"images", "model_versions"} or revision is None:
            report.not_checked.append("stored images and models (their tables are not as Sortlab made them)")
        else:
            try:
                report.refused = _refused_items(connection, deep=integrity)
            except sqlite3.DatabaseError as exc:
                report.not_checked.append(f"stored images and models ({exc})")
    _plan(report, findings)
    return report


def _plan(report: CheckReport, findings: list[trust.SchemaFinding]) -> None:
    for finding in findings:
        if finding.problem == "foreign":
            report.would_fix.append(f"drop {finding.describe()}")
        else:
            report.cannot_fix.append(f"{finding.describe()}: restore a backup or ask for a fresh copy")
    for table, count in report.orphans.items():
        report.would_fix.append(f"delete {count} row(s) of {table} that point at rows that do not exist")
    if report.integrity:
        report.cannot_fix.insert(0, "damaged pages: restore a backup or ask for a fresh copy")
    if report.refused:
        report.cannot_fix.append(f"{len(report.refused)} stored item(s) Sortlab will not load "
                                 "(the rest of the project stays usable)")


def _backup_path(path: Path) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return path.with_name(f"{path.name}.before-strip-{stamp}.bak")


def strip_foreign(path: str | Path) -> CheckReport:
    """Back the file up, then drop what Sortlab did not make and delete orphan rows; the report says
    what was done (``fixed``) and where the backup is."""
    path = Path(path)
    report = check_project(path)
    if report.integrity:
        raise ProjectError(f"{path.name} is damaged, so nothing was changed: restore a backup or ask for a fresh copy.")
    findings = [trust.SchemaFinding(**{k: item[k] for k in ("problem", "kind", "name", "table")})
                for item in report.schema]
    unfixable = [f for f in findings if f.problem != "foreign"]
    if unfixable:  # removing the rest could not make it a project Sortlab opens: change nothing
        raise ProjectError(f"{path.name} cannot be repaired ({', '.join(f.describe() for f in unfixable[:3])}), "
                           "so nothing was changed: ask for a fresh copy.")
    foreign = sorted((f for f in findings if f.problem == "foreign"), key=lambda f: _DROP_ORDER.get(f.kind, 9))
    if not foreign and not report.orphans:
        return report
    backup = _backup_path(path)
    source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        destination = sqlite3.connect(str(backup))
        with destination:
            source.backup(destination)
        destination.close()
    finally:
        source.close()
    report.backup = str(backup)
    connection = sqlite3.connect(str(path), isolation_level=None)
    try:
        trust.harden(connection)
        connection.execute("PRAGMA foreign_keys=OFF")
        connection.execute("BEGIN IMMEDIATE")
        try:
            for finding in foreign:
                connection.execute(f"DROP {finding.kind.upper()} IF EXISTS {trust._quoted(finding.name)}")
                report.fixed.append(f"dropped {finding.describe()}")
            for table, rowids in _orphans(connection).items():
                for start in range(0, len(rowids), 500):
                    chunk = rowids[start:start + 500]
                    connection.execute(f"DELETE FROM {trust._quoted(table)} WHERE rowid IN ({','.join('?' * len(chunk))})",
                                       chunk)
                report.fixed.append(f"deleted {len(rowids)} orphan row(s) of {table}")
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            connection.execute("ROLLBACK")
            raise ProjectError(f"Could not repair {path.name} ({exc}); it is unchanged, and a backup is at "
                               f"{backup.name}.") from exc
    finally:
        connection.close()
    after = check_project(path)
    after.fixed, after.backup = report.fixed, report.backup
    if not after.schema and not after.integrity:
        trust.remember_file(path)
    return after
