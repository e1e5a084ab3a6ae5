"""Where a project lives: a ``.sortlab`` file (SQLite) or a PostgreSQL database (a team project).

A team project is named by a database URL wherever a project path is accepted, e.g.
``postgresql+psycopg://operator@db.example/sortlab_bins`` or, on a Unix socket,
``postgresql+psycopg://operator@/sortlab_bins?host=/var/run/postgresql``. Passwords never travel in
project names that Sortlab shows or keeps: libpq's own ``PGPASSWORD`` / ``~/.pgpass`` apply, or the
caller passes ``password=`` (the GUI's prompt), which goes to the driver and nowhere else.

The storage modules were written for SQLite and a few of their hot queries are raw SQL. On PostgreSQL
the engine rewrites those few SQLite-only forms into their equivalents just before they reach the
driver (``translate_sqlite_sql``): ``?`` placeholders, ``INSERT OR REPLACE`` (an upsert on the table's
primary key), ``INDEXED BY`` hints, ``COLLATE NOCASE`` and ``json_each``; the SQL function
``float32_at`` exists in the database as a plain SQL function (``FLOAT32_AT_SQL``).
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from storage.errors import ProjectError

URL_PREFIXES = ("postgresql://", "postgresql+psycopg://", "postgres://")


def is_database_url(target: object) -> bool:
    return isinstance(target, str) and target.strip().lower().startswith(URL_PREFIXES)


def parse_database_url(text: str) -> URL:
    """A SQLAlchemy URL using the psycopg (3) driver; a clear ProjectError for anything else."""
    text = text.strip()
    if text.lower().startswith("postgres://"):
        text = "postgresql://" + text[len("postgres://"):]
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise ProjectError(f"Not a database URL: {shown_url_text(text)}") from exc
    if url.get_backend_name() != "postgresql":
        raise ProjectError(f"Only PostgreSQL team projects are supported, not {url.get_backend_name()}.")
    if url.get_driver_name() not in ("psycopg", "psycopg2", None, ""):
        raise ProjectError(f"Use the psycopg driver (postgresql+psycopg://...), not {url.get_driver_name()}.")
    url = url.set(drivername="postgresql+psycopg")
    if not url.database:
        raise ProjectError(f"The URL names no database: {shown_url(url)}")
    return url


def shown_url(url: URL) -> str:
    """The URL as Sortlab shows it: never with its password."""
    shown = url.render_as_string(hide_password=True).replace(":***@", "@")
    base, mark, query = shown.partition("?")
    return base + mark + unquote(query)  # ?host=/var/run/postgresql, as people type it


def shown_url_text(text: str) -> str:
    return re.sub(r"(//[^:/@]*):[^@]*@", r"\1@", text)


def make_pg_engine(url: URL, password: str | None = None) -> Engine:
    connect_args: dict = {"application_name": "sortlab", "connect_timeout": 15}
    if password:
        connect_args["password"] = password
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_size=5, max_overflow=10)

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _translate(_conn, _cursor, statement, parameters, _context, _executemany):
        return translate_sqlite_sql(statement), parameters

    return engine


# -- SQLite forms -> PostgreSQL ------------------------------------------------------------------

# storage.browse's self-confidence and chosen-ids fragments (json_each over a JSON array).
_JSON_EACH_CLASS_IDS = "json_each(m.class_ids) j WHERE m.id = p.model_version_id AND j.value = l.class_id"
_JSON_EACH_CLASS_IDS_PG = ("json_array_elements_text(m.class_ids) WITH ORDINALITY AS j(value, ordinal) "
                           "WHERE m.id = p.model_version_id AND j.value = CAST(l.class_id AS TEXT)")
_JSON_KEY = "CAST(j.key AS INTEGER)"
_JSON_KEY_PG = "CAST(j.ordinal - 1 AS INTEGER)"
_CHOSEN = "(SELECT MIN(key) AS key, value FROM json_each(?) GROUP BY value)"
_CHOSEN_PG = ("(SELECT MIN(t.ordinal) AS key, CAST(t.value AS BIGINT) AS value "
              "FROM json_array_elements_text(CAST(? AS JSON)) WITH ORDINALITY AS t(value, ordinal) GROUP BY t.value)")

_UPSERT = re.compile(r"^\s*INSERT\s+OR\s+(REPLACE|IGNORE)\s+INTO\s+(\w+)\s*\(([^)]*)\)", re.IGNORECASE)
_INDEXED_BY = re.compile(r"\s+INDEXED\s+BY\s+\w+", re.IGNORECASE)
_NOCASE = re.compile(r"([\w.]+)\s+COLLATE\s+NOCASE", re.IGNORECASE)


def _primary_key(table: str) -> list[str]:
    from storage.models import Base

    found = Base.metadata.tables.get(table)
    if found is None:
        raise ProjectError(f"INSERT OR REPLACE into unknown table {table}")
    return [column.name for column in found.primary_key.columns]


def _question_marks_to_format(statement: str) -> str:
    """``?`` -> ``%s`` outside quoted literals (and a literal ``%`` doubled, as the driver wants)."""
    out: list[str] = []
    quote: str | None = None
    for char in statement:
        if quote:
            out.append("%%" if char == "%" else char)
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
            out.append(char)
        elif char == "?":
            out.append("%s")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    return "".join(out)


@functools.lru_cache(maxsize=512)
def translate_sqlite_sql(statement: str) -> str:
    """The PostgreSQL form of a statement written for SQLite (unchanged when it has no SQLite forms)."""
    if "json_each" in statement:
        statement = (statement.replace(_JSON_EACH_CLASS_IDS, _JSON_EACH_CLASS_IDS_PG)
                     .replace(_JSON_KEY, _JSON_KEY_PG).replace(_CHOSEN, _CHOSEN_PG))
        if "json_each" in statement:
            raise ProjectError("A json_each query has no PostgreSQL form yet: " + statement[:120])
    upsert = _UPSERT.match(statement)
    if upsert:
        kind, table, columns = upsert.group(1).upper(), upsert.group(2), upsert.group(3)
        statement = f"INSERT INTO {table} ({columns})" + statement[upsert.end():]
        keys = _primary_key(table)
        names = [name.strip().strip('"') for name in columns.split(",")]
        others = [name for name in names if name not in keys]
        if kind == "IGNORE" or not others:
            statement += f" ON CONFLICT ({', '.join(keys)}) DO NOTHING"
        else:
            updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in others)
            statement += f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    statement = _INDEXED_BY.sub("", statement)
    statement = _NOCASE.sub(r"lower(\1)", statement)
    if "?" in statement:
        statement = _question_marks_to_format(statement)
    return statement


# The i-th little-endian float32 of a blob, as storage.project.float32_at computes it for SQLite.
FLOAT32_AT_SQL = """
CREATE OR REPLACE FUNCTION float32_at(blob bytea, i integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
  WHEN blob IS NULL OR i IS NULL OR i < 0 OR i >= length(blob) / 4 THEN NULL
  ELSE (SELECT CASE WHEN e = 255 THEN NULL
                    WHEN e = 0 THEN s * m * power(2::float8, -149)
                    ELSE s * (1 + m / 8388608.0::float8) * power(2::float8, e - 127) END
        FROM (SELECT CASE WHEN (b >> 31) = 1 THEN -1::float8 ELSE 1::float8 END AS s,
                     ((b >> 23) & 255)::int AS e, (b & 8388607)::float8 AS m
              FROM (SELECT get_byte(blob, 4 * i)::bigint | (get_byte(blob, 4 * i + 1)::bigint << 8)
                           | (get_byte(blob, 4 * i + 2)::bigint << 16) | (get_byte(blob, 4 * i + 3)::bigint << 24)
                           AS b) bits) parts)
END
$$
"""


# -- concurrent label writes -----------------------------------------------------------------------

LABEL_LOCK_NAMESPACE = 0x5AB  # first key of pg_advisory_xact_lock(namespace, image_id)


def lock_images_for_labeling(session, image_ids) -> None:
    """In a team project's write transaction, wait for (and hold until commit) a per-image lock on each
    image about to be relabeled, taken in id order (no deadlock between two writers). The label row and
    its history event then read the label the other writer committed: two people labeling one image at
    once end with the later label and both events, and never a lost write or a duplicate-key error.
    Advisory locks need no privilege beyond connecting. A no-op for file projects (SQLite's BEGIN
    IMMEDIATE already lets one writer in at a time) and for read sessions."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or not connection.get_execution_options().get("sortlab_write"):
        return
    ids = sorted({int(i) for i in image_ids})
    if ids:
        connection.execute(
            text("SELECT pg_advisory_xact_lock(:namespace, id) FROM (SELECT unnest(CAST(:ids AS integer[])) AS id "
                 "ORDER BY 1) AS wanted"),
            {"namespace": LABEL_LOCK_NAMESPACE, "ids": ids})
