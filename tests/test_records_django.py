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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings

from shardcache.errors import ConfigurationError, InvalidRecordVersion, InvalidServerVersion
from shardcache.records import MemoryRecordStore, Record, RedisRecordStore
from shardcache.testing import StandaloneRedis
from shardcache_django.records import StoreHandler, orm
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


@pytest.fixture(params=["orm", "redis"])
def command_store(request: pytest.FixtureRequest) -> Iterator[str]:
    """SHARDCACHE_RECORDS["default"] on the ORM, or on a Redis store never written before."""
    if request.param == "orm":
        yield "orm"
        return
    servers: StandaloneRedis = request.getfixturevalue("clean_redis_pool_servers")
    entry = {
        "BACKEND": "redis",
        "LOCATION": servers.urls,
        "OPTIONS": {"NAME": f"cmd-{uuid.uuid4().hex[:8]}"},
    }
    with override_settings(SHARDCACHE_RECORDS={"default": entry}):
        yield "redis"


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("shardcache_records", *args, stdout=out)
    return out.getvalue()


def test_the_command_syncs_and_lists_an_empty_store(command_store: str) -> None:
    # A Redis store never written said "the store was reset" here: a header, no rows.
    assert _run("sync", "user").split() == ["version", "type", "id", "data", "modified"]
    assert _run("sync", "user", "--json") == ""
    assert _run("leases", "--json") == ""
    assert json.loads(_run("stats", "--json"))["types"] == {}


def test_the_command_takes_renews_and_releases_leases(command_store: str) -> None:
    taken = json.loads(_run("lease", "nightly", "--holder", "w1", "--ttl", "30", "--json"))
    assert taken["holder"] == "w1"
    assert 29 <= float(taken["expires in (s)"]) <= 30
    with pytest.raises(CommandError, match="is held by w1"):
        _run("lease", "nightly", "--holder", "w2", "--ttl", "30")
    with pytest.raises(CommandError, match="not held by 'w2'"):
        _run("renew", "nightly", "--holder", "w2", "--ttl", "60")
    with pytest.raises(CommandError, match="not held by 'w2'"):
        _run("release", "nightly", "--holder", "w2")
    renewed = json.loads(_run("renew", "nightly", "--holder", "w1", "--ttl", "600", "--json"))
    assert float(renewed["expires in (s)"]) > 500
    assert "w1" in _run("leases")
    assert "released nightly (w1)" in _run("release", "nightly", "--holder", "w1")
    assert _run("leases", "--json") == ""
    with pytest.raises(CommandError, match="not held by 'w1'"):
        _run("renew", "nightly", "--holder", "w1", "--ttl", "60")  # gone: nothing to renew
    with pytest.raises(CommandError, match="not held"):
        _run("release", "nightly", "--holder", "w1")


def test_the_command_through_call_command(command_store: str) -> None:
    run = _run
    run("put", "user", "ada", "--data", '{"name": "Ada", "role": "admin"}')
    run("put", "user", "bob", "--data", '{"name": "Bob", "role": "dev"}')
    assert json.loads(run("get", "user", "ada", "--json"))["data"]["name"] == "Ada"
    table = run("latest", "user", "--filter", '{"role": {"$in": ["dev"]}}').splitlines()
    assert table[0].split() == ["version", "type", "id", "data", "modified"]
    assert [line.split()[2] for line in table[1:]] == ["bob"]
    synced = [json.loads(line) for line in run("sync", "user", "--json").splitlines()]
    assert [c["id"] for c in synced] == ["ada", "bob"]
    bob = str(synced[-1]["version"])
    run("delete", "user", "ada")
    since = [
        json.loads(line) for line in run("sync", "user", "--since", bob, "--json").splitlines()
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
    assert stats["last_version"] == since[-1]["version"]
    assert "oldest retained change" in run("stats")
    StoreHandler()["default"].lease("nightly", "worker-1", 30)
    assert "worker-1" in run("leases")
    last = str(since[-1]["version"])
    follow = run("sync", "user", "--since", last, "--follow", "--timeout", "0.3")
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


# --- integrity: a sync never skips a change silently ---------------------------------------


def _orm_store(**options: Any) -> OrmRecordStore:
    return OrmRecordStore(namespace=f"ns-{uuid.uuid4().hex[:8]}", **options)


@pytest.mark.parametrize("between", ["maintain", "clear"])
def test_a_sweep_or_clear_between_the_cursor_check_and_the_read_is_an_error(
    between: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _orm_store(change_expiry=60)
    other = OrmRecordStore(namespace=store.namespace, change_expiry=60)
    server_version = store.put([Record("t", f"r{i}", {"i": i}) for i in range(4)])
    if between == "maintain":  # every change is old by the sweeper's clock
        later = orm.now_ms() + 120_000
        monkeypatch.setattr(orm, "now_ms", lambda: later)
    monkeypatch.setattr(store, "_after_cursor_check", getattr(other, between))
    expected = InvalidRecordVersion if between == "maintain" else InvalidServerVersion
    with pytest.raises(expected):
        list(store.sync("t", server_version, 0))


def test_clock_skewed_writers_leave_trimmed_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    store = _orm_store(change_expiry=60)
    clock = [1_000_000_000_000]
    monkeypatch.setattr(orm, "now_ms", lambda: clock[0])
    server_version = store.put([Record("t", "a", {}), Record("t", "b", {})])  # v1, v2
    clock[0] -= 3_600_000  # a writer whose clock is an hour behind
    store.put([Record("t", "c", {}), Record("t", "d", {})])  # v3, v4, "older"
    clock[0] += 3_600_000 + 1_000
    store.maintain()  # drops v3 and v4 only
    assert store.stats()["trimmed"] == 4
    clock[0] += 120_000
    store.maintain()  # now v1 and v2 too: trimmed must not go back to 2
    assert store.stats()["trimmed"] == 4
    with pytest.raises(InvalidRecordVersion):
        list(store.sync("t", server_version, 2))  # v3 and v4 are gone: an error, no gap
