"""A throwaway PostgreSQL server for the team-project tests: initdb into a temporary folder, ``pg_ctl``
start listening on a Unix socket only (no TCP), stopped and removed at the end of the session.

Tests take the ``pg_server`` fixture (session scope) and ask it for a fresh database with
``pg_server.new_database()``; they skip with one clear line where no PostgreSQL binaries exist.
When the tests run as root (CI containers), the server runs as the ``postgres`` OS user, since
initdb and the server refuse to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest

SKIP_REASON = "PostgreSQL binaries (pg_ctl, initdb) not found: team-project tests skipped"
SUPERUSER = "postgres"


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(folder, "pg_ctl"), os.X_OK) and os.access(os.path.join(folder, "initdb"), os.X_OK):
            return Path(folder)
    return None


@dataclass
class PgServer:
    bin_dir: Path
    root: Path
    run_as: str | None  # OS user running the server, None: the current user
    _databases: list[str] = field(default_factory=list)

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _command(self, *args: str) -> list[str]:
        return (["runuser", "-u", self.run_as, "--"] if self.run_as else []) + list(args)

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self._command(*args), check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self.socket_dir.mkdir(parents=True)
        if self.run_as:
            record = pwd.getpwnam(self.run_as)
            for path in (self.root, self.socket_dir):
                os.chown(path, record.pw_uid, record.pw_gid)
        self.run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                 "-E", "UTF8", "--no-sync")
        options = (f"-c listen_addresses='' -k {self.socket_dir} -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=60")
        self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
                 "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self.run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, user: str = SUPERUSER) -> str:
        """A Unix-socket URL (``host`` names the socket folder), as users type it."""
        return f"postgresql+psycopg://{quote(user)}@/{database}?host={quote(str(self.socket_dir))}"

    def psql(self, sql: str, database: str = "postgres", user: str = SUPERUSER) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-U", user, "-d", database, "-c", sql],
            check=True, capture_output=True, text=True, timeout=60)
        return result.stdout.strip()

    def new_database(self, prefix: str = "sortlab", owner: str = SUPERUSER) -> str:
        """An empty database (a fresh name each call); returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}"')
        self._databases.append(name)
        return self.url(name, owner)


def start_server() -> PgServer | None:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        return None
    run_as = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return None
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="sortlab-pg-"))
    os.chmod(root, 0o755)
    server = PgServer(bin_dir, root, run_as)
    try:
        server.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@pytest.fixture(scope="session")
def pg_server():
    server = start_server()
    if server is None:
        pytest.skip(SKIP_REASON)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.new_database()
