"""A throwaway PostgreSQL server, for the record store's ORM tests on a real database.

``initdb`` makes a cluster in the topology's temporary directory and ``postgres`` serves it on
a free loopback port (and a Unix socket in the same directory), with fsync off: data that
lives for one test session. PostgreSQL refuses to run as root, so as root it runs as the
``postgres`` user that Debian's package creates. Needs the server binaries (Debian's
``postgresql`` package: ``./dev setup`` installs it) and psycopg 3.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shardcache.errors import BinaryNotFoundError, ServerNotReadyError
from shardcache.testing._base import HealthRow, Topology
from shardcache.testing._process import HOST, ServerProcess, pick_port
from shardcache.testing.servers import PROBE_TIMEOUT

__all__ = ["LocalPostgres", "PostgresServer"]

_BIN_DIRS = "/usr/lib/postgresql/*/bin"
_USER = "postgres"


def postgres_binary(name: str) -> str:
    """The path of a PostgreSQL server program (Debian keeps them off the PATH)."""
    found = shutil.which(name)
    if found is None:
        candidates = sorted(glob.glob(f"{_BIN_DIRS}/{name}"), reverse=True)  # newest first
        found = candidates[0] if candidates else None
    if found is None:
        raise BinaryNotFoundError(
            f"{name} not found: apt-get install postgresql (or run ./dev setup)"
        )
    return found


def _run_as() -> dict[str, Any]:
    """Popen options that drop root to the postgres user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam(_USER)
    except KeyError:
        raise BinaryNotFoundError(
            "PostgreSQL will not run as root and there is no 'postgres' user: "
            "apt-get install postgresql creates it"
        ) from None
    return {"user": _USER, "group": _USER, "extra_groups": []}


class PostgresServer(ServerProcess):
    """One ``postgres`` serving a cluster made by ``initdb`` in its work directory."""

    binary = "postgres"
    role = "postgres"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def popen_options(self) -> dict[str, Any]:
        return _run_as()

    def write_config(self) -> None:
        if os.geteuid() == 0:
            # The cluster's owner must reach and own its directory.
            os.chmod(self.workdir.parent, 0o755)
            shutil.chown(self.workdir, _USER, _USER)
        result = subprocess.run(
            [
                postgres_binary("initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            cwd=self.workdir,
            capture_output=True,
            timeout=120,
            check=False,
            **_run_as(),
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")[-2000:]
            raise ServerNotReadyError(f"initdb failed for {self.label}:\n{output}")

    def command(self, binary: str) -> list[str]:
        return [
            postgres_binary("postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            HOST,
            "-k",
            str(self.workdir),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

    @property
    def dsn(self) -> str:
        return f"host={HOST} port={self.port} user=postgres dbname=postgres"

    def connect(self, dbname: str = "postgres") -> Any:
        import psycopg

        return psycopg.connect(
            f"host={HOST} port={self.port} user=postgres dbname={dbname}",
            connect_timeout=max(1, int(PROBE_TIMEOUT)),
            autocommit=True,
        )

    def ping(self) -> bool:
        try:
            with self.connect() as conn:
                conn.execute("SELECT 1")
        except Exception:  # not up yet: any driver error
            return False
        return True


class LocalPostgres(Topology):
    """One throwaway PostgreSQL server (`PostgresServer`) for a test session."""

    kind = "postgres"

    @property
    def server(self) -> PostgresServer:
        return self.processes[0]  # type: ignore[return-value]

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[Any]:
        port = ports[0] if ports else pick_port()
        return [PostgresServer(port, root / "postgres", label="postgres")]

    def database(self, name: str) -> dict[str, Any]:
        """A Django ``DATABASES`` entry for database ``name`` (created when missing)."""
        with self.server.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": HOST,
            "PORT": str(self.server.port),
            "TEST": {"NAME": name},
        }

    def flush(self) -> None:
        """Nothing: each test works in a namespace of its own."""

    def health(self) -> list[HealthRow]:
        ok = self.server.ping()
        return [HealthRow(self.kind, "postgres", self.server.address, "postgres", ok)]

    def describe(self) -> dict[str, Any]:
        return {"dsn": self.server.dsn}
