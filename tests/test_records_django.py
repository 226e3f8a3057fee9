"""The record store's Django app: the ORM store (conformance suite on SQLite), settings,
system checks, and the ``shardcache_records`` command (through call_command and a real
``manage.py``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from shardcache.errors import ConfigurationError
from shardcache.records import MemoryRecordStore, RedisRecordStore
from shardcache.testing import StandaloneRedis
from shardcache_django.records import StoreHandler
from shardcache_django.records.checks import check_record_stores
from shardcache_django.records.orm import OrmRecordStore
from tests.record_contract import RecordStoreContract

pytestmark = pytest.mark.django_db(transaction=True)

WRITER = """
import sys, django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["shardcache_django.records"],
    DATABASES={{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {path!r},
                             "OPTIONS": {{"timeout": 60}}}}}},
    USE_TZ=True,
)
django.setup()
from shardcache.records import Record
from shardcache_django.records.orm import OrmRecordStore
store = OrmRecordStore(namespace={namespace!r})
for i in range(int(sys.argv[1])):
    store.put([Record("remote", f"w{{i}}", {{"i": i}})])
"""


class TestOrmRecordStore(RecordStoreContract):
    @pytest.fixture(autouse=True)
    def _namespace(self) -> None:
        self.namespace = f"ns-{uuid.uuid4().hex[:8]}"

    def make_store(self, **options: Any) -> Any:
        return OrmRecordStore(namespace=self.namespace, **options)

    def writer_command(self, count: int) -> list[str]:
        path = connection.settings_dict["NAME"]
        code = WRITER.format(path=path, namespace=self.namespace)
        return [sys.executable, "-c", code, str(count)]


def test_without_a_setting_the_default_store_is_the_orm_on_the_default_database() -> None:
    store = StoreHandler()["default"]
    assert isinstance(store, OrmRecordStore)
    assert (store.using, store.namespace) == ("default", "default")


def test_stores_from_settings(clean_redis_pool_servers: StandaloneRedis) -> None:
    records = {
        "default": {"BACKEND": "memory", "OPTIONS": {"PAGE_SIZE": 10}},
        "shared": {
            "BACKEND": "redis",
            "LOCATION": clean_redis_pool_servers.urls,
            "OPTIONS": {"TOPOLOGY": "hashpool", "NAME": "shared", "CHANGE_EXPIRY": 60},
        },
    }
    with override_settings(SHARDCACHE_RECORDS=records):
        handler = StoreHandler()
        assert isinstance(handler["default"], MemoryRecordStore)
        assert handler["default"].page_size == 10
        assert handler["default"] is handler["default"]
        shared = handler["shared"]
        assert isinstance(shared, RedisRecordStore)
        assert shared.prefix == "{shared}:"
        with pytest.raises(ConfigurationError, match="no record store 'other'"):
            handler["other"]
        handler.close_all()


BAD = {
    "E101": {"BACKEND": "mongo"},
    "E102": {"BACKEND": "orm", "OPTIONS": {"COLOUR": "blue"}},
    "E103": {"BACKEND": "redis", "LOCATION": [], "OPTIONS": {"TOPOLOGY": "cluster"}},
    "E104": {"BACKEND": "memory", "OPTIONS": {"ENCRYPTION_KEYS": [["k", "c2hvcnQ="]]}},
}


@pytest.mark.parametrize("code", list(BAD))
def test_system_checks_report_misconfigured_stores(code: str) -> None:
    with override_settings(SHARDCACHE_RECORDS={"bad": BAD[code]}):
        errors = check_record_stores()
        assert [e.id for e in errors] == [f"shardcache.{code}"]
        with pytest.raises(ConfigurationError, match=code):
            StoreHandler()["bad"]


def test_the_command_through_call_command() -> None:
    def run(*args: str) -> str:
        out = io.StringIO()
        call_command("shardcache_records", *args, stdout=out)
        return out.getvalue()

    run("put", "user", "ada", "--data", '{"name": "Ada", "role": "admin"}')
    run("put", "user", "bob", "--data", '{"name": "Bob", "role": "dev"}')
    assert json.loads(run("get", "user", "ada", "--json"))["data"]["name"] == "Ada"
    table = run("latest", "user", "--filter", '{"role": {"$in": ["dev"]}}').splitlines()
    assert table[0].split() == ["version", "type", "id", "data", "modified"]
    assert [line.split()[2] for line in table[1:]] == ["bob"]
    assert [json.loads(line)["id"] for line in run("sync", "user", "--json").splitlines()] == [
        "ada",
        "bob",
    ]
    run("delete", "user", "ada")
    since = [
        json.loads(line) for line in run("sync", "user", "--since", "2", "--json").splitlines()
    ]
    assert [(c["id"], c["deleted_at"] is not None) for c in since] == [("ada", True)]
    assert "capacity" in run("options", "user", "--capacity", "5", "--ttl", "60")
    assert json.loads(run("options", "user", "--json")) == {
        "type": "user",
        "capacity": 5,
        "ttl": 60.0,
    }
    stats = json.loads(run("stats", "--json"))
    assert stats["types"] == {"user": 1}
    assert stats["last_version"] == 3
    assert "oldest retained change" in run("stats")
    StoreHandler()["default"].lease("nightly", "worker-1", 30)
    assert "worker-1" in run("leases")
    follow = run("sync", "user", "--since", "3", "--follow", "--timeout", "0.3")
    assert follow == ""  # nothing new: it waited, then ended at the timeout
    with pytest.raises(CommandError, match="no record"):
        run("get", "user", "nobody")
    with pytest.raises(CommandError, match="not valid JSON"):
        run("put", "user", "x", "--data", "{oops")
    with pytest.raises(CommandError, match="no record store"):
        run("stats", "--store", "missing")


def test_the_command_through_a_real_manage_py(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "SHARDCACHE_EXAMPLE_DB": str(tmp_path / "example.sqlite3")}
    env.pop("DJANGO_SETTINGS_MODULE", None)

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(root / "example_project" / "manage.py"), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    assert manage("migrate", "-v", "0").returncode == 0
    put = manage("shardcache_records", "put", "job", "j1", "--data", '{"state": "queued"}')
    assert put.returncode == 0, put.stderr
    got = manage("shardcache_records", "get", "job", "j1", "--json")
    assert json.loads(got.stdout)["data"] == {"state": "queued"}
    missing = manage("shardcache_records", "get", "job", "nope")
    assert missing.returncode != 0
    assert "no record 'job'/'nope'" in missing.stderr
