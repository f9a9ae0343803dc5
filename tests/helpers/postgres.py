"""A throwaway PostgreSQL server for tests: Debian's binaries, a tmp folder, a loopback port.

PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(``runuser``), in a folder handed to that user. ``.ci/run`` installs the ``postgresql``
package; :func:`find_binaries` finds ``initdb`` and ``pg_ctl`` on PATH or in Debian's
``/usr/lib/postgresql/<version>/bin``. Nothing here runs at import time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cli.processes import LOOPBACK, free_port

START_TIMEOUT_S = 120  # generous: a busy CI machine
SYSTEM_USER = "postgres"
DATABASE_USER = "mlflow"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest Debian version), or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


def _as_server_user(command: list[str]) -> list[str]:
    """``command`` run as ``postgres`` when we are root (PostgreSQL refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SYSTEM_USER, "--", *command]
    return command


@dataclass
class PostgresServer:
    """A running PostgreSQL cluster in ``folder``, listening on ``127.0.0.1:port``."""

    binaries: Path
    folder: Path
    port: int

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def uri(self, database: str = "mlflow", driver: str = "psycopg2") -> str:
        """A SQLAlchemy URI for ``database`` (trust authentication on loopback)."""
        return f"postgresql+{driver}://{DATABASE_USER}@{LOOPBACK}:{self.port}/{database}"

    def run(self, tool: str, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        done = subprocess.run(
            _as_server_user([str(self.binaries / tool), *args]),
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout

    def create_database(self, name: str) -> None:
        self.run("createdb", "-h", LOOPBACK, "-p", str(self.port), "-U", DATABASE_USER, name)

    def stop(self) -> None:
        """Stop at once (``-m fast``: open sessions are ended); a stopped server is fine."""
        if (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


def start_postgres(folder: Path, binaries: Path) -> PostgresServer:
    """initdb in ``folder`` and start the server on a free loopback port; ready on return."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, SYSTEM_USER, SYSTEM_USER)
    server = PostgresServer(binaries=binaries, folder=folder, port=free_port())
    server.run(
        "initdb",
        "-D",
        str(server.data),
        "-U",
        DATABASE_USER,
        "--auth=trust",
        "--encoding=UTF8",
        "--no-sync",  # a throwaway cluster: no fsync wait
    )
    options = (
        f"-c listen_addresses={LOOPBACK} -c port={server.port} "
        f"-c unix_socket_directories={folder} -c fsync=off"
    )
    server.run(
        "pg_ctl",
        "-D",
        str(server.data),
        "-l",
        str(server.log),
        "-o",
        options,
        "-w",
        "-t",
        str(START_TIMEOUT_S),
        "start",
    )
    return server
