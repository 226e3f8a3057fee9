"""The ORM record store on a real PostgreSQL (psycopg 3): the whole conformance suite, and
versions and leases under writers in several processes at once."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from shardcache.testing.postgres import LocalPostgres
from shardcache_django.records.orm import OrmRecordStore
from tests.record_contract import RecordStoreContract

pytest.importorskip("psycopg", reason="the PostgreSQL tests need psycopg 3 (./dev setup)")

ALIAS = "records_pg"

# A writer in a process of its own, on the same PostgreSQL database.
WRITER = """
import json, os, sys, time, django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["shardcache_django.records"],
    DATABASES={{"default": {entry!r}}},
    USE_TZ=True,
)
django.setup()
from shardcache.records import Record
from shardcache_django.records.orm import OrmRecordStore
store = OrmRecordStore(namespace={namespace!r})
me, count, mode = str(os.getpid()), int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "put"
problems = []
if mode == "put":
    for i in range(count):
        store.put([Record("remote", f"w{{me}}-{{i}}", {{"i": i}})])
else:  # leases: a critical section that only the lease holder may enter
    held = 0
    while held < count:
        if not store.lease("L", me, 5):
            time.sleep(0.001)
            continue
        held += 1
        try:
            inside = None
            if "crit" in store.list_types():
                inside = store.get("crit", "x").data.get("holder")
            if inside:
                problems.append(f"{{me}} entered while {{inside}} was inside")
            store.put([Record("crit", "x", {{"holder": me}})])
            time.sleep(0.002)
            if store.get("crit", "x").data.get("holder") != me:
                problems.append(f"{{me}} was joined in the critical section")
            store.put([Record("crit", "x", {{"holder": None}})])
        finally:
            store.release("L", me)
print(json.dumps(problems))
"""


@pytest.fixture(scope="module")
def postgres(django_db_blocker: Any) -> Iterator[dict[str, Any]]:
    """A local PostgreSQL with the record store's tables, as Django database ``ALIAS``."""
    with LocalPostgres() as local:
        entry = local.database("shardcache_records")
        connections.settings[ALIAS] = connections.configure_settings(
            {**connections.settings, ALIAS: entry}
        )[ALIAS]
        with django_db_blocker.unblock():
            call_command("migrate", "shardcache_records", database=ALIAS, verbosity=0)
            yield entry
            connections[ALIAS].close()
        del connections.settings[ALIAS]


class TestOrmRecordStoreOnPostgres(RecordStoreContract):
    @pytest.fixture(autouse=True)
    def _database(self, postgres: dict[str, Any], django_db_blocker: Any) -> Iterator[None]:
        self.entry = postgres
        self.namespace = f"ns-{uuid.uuid4().hex[:8]}"
        with django_db_blocker.unblock():
            yield

    def make_store(self, **options: Any) -> Any:
        return OrmRecordStore(using=ALIAS, namespace=self.namespace, **options)

    def writer_command(self, count: int) -> list[str]:
        code = WRITER.format(entry=self.entry, namespace=self.namespace)
        return [sys.executable, "-c", code, str(count)]

    def _writers(self, processes: int, count: int, mode: str) -> list[str]:
        command = [*self.writer_command(count), mode]
        running = [subprocess.Popen(command, stdout=subprocess.PIPE) for _ in range(processes)]
        problems: list[str] = []
        for proc in running:
            out, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0
            problems += json.loads(out)
        return problems

    def test_versions_from_four_processes_at_once_are_1_to_n(self) -> None:
        assert self._writers(4, 100, "put") == []
        store = self.make_store()
        server_version, last, current = store.sync_latest("remote")
        assert last == 400
        assert sorted(record.version for record in current) == list(range(1, 401))
        changes = list(store.sync("remote", server_version, 0))
        assert [change.version for change in changes] == list(range(1, 401))

    def test_leases_exclude_each_other_across_processes(self) -> None:
        assert self._writers(4, 25, "lease") == []
