"""Operating live caches: `Cache.stats` and `Cache.where` on every topology, through
``manage.py shardcache_cache`` and ``flask shardcache``, checked against the servers."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.core.management import CommandError, call_command
from django.test import override_settings
from pymemcache.client.base import Client as MemcacheClient

from shardcache.testing import MemcachedServers, RedisCluster, RedisSentinel, StandaloneRedis
from shardcache_django.cache import BACKENDS

KINDS = ["hashpool", "cluster", "sentinel", "memcache"]
_CLASS = {kind: backend.__name__ for kind, backend in BACKENDS.items()}


@pytest.fixture
def every(
    clean_redis_pool_servers: StandaloneRedis,
    clean_redis_cluster: RedisCluster,
    clean_redis_sentinel: RedisSentinel,
    clean_memcached_servers: MemcachedServers,
) -> Iterator[dict[str, Any]]:
    """CACHES with one alias per topology, and every server address of each."""
    sentinel = clean_redis_sentinel.describe()
    caches_setting = {
        "hashpool": (clean_redis_pool_servers.urls, {}),
        "cluster": (clean_redis_cluster.describe()["startup_nodes"][:1], {}),
        "sentinel": (sentinel["sentinels"], {"MASTERS": sentinel["names"]}),
        "memcache": (clean_memcached_servers.addresses, {}),
    }
    servers = {
        "hashpool": {s.address for s in clean_redis_pool_servers.servers},
        "cluster": {n.address for n in clean_redis_cluster.nodes},
        "sentinel": {n.address for n in clean_redis_sentinel.redis_nodes},
        "memcache": set(clean_memcached_servers.addresses),
    }
    entries = {
        kind: {
            "BACKEND": f"shardcache_django.cache.{_CLASS[kind]}",
            "LOCATION": location,
            "OPTIONS": options,
            "KEY_PREFIX": "ops",
        }
        for kind, (location, options) in caches_setting.items()
    }
    with override_settings(CACHES={"default": entries["hashpool"], **entries}):
        yield servers


def _run(*args: str) -> str:
    out = io.StringIO()
    call_command("shardcache_cache", *args, stdout=out)
    return out.getvalue()


def _lines(*args: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _run(*args, "--json").splitlines()]


def _address(report_address: str) -> str:
    return report_address.split("/")[0]


@pytest.mark.parametrize("kind", KINDS)
def test_info_lists_every_server_with_live_figures(kind: str, every: dict[str, Any]) -> None:
    cache = caches[kind]
    before = {_address(r["address"]): r for r in _lines("info", kind)}
    assert set(before) == every[kind]  # every server: masters and replicas
    assert all(r["reachable"] and r["latency_ms"] is not None for r in before.values())
    cache.set_many({f"k{i}": i for i in range(50)})
    assert cache.get_many([f"k{i}" for i in range(50)]) == {f"k{i}": i for i in range(50)}
    after = {_address(r["address"]): r for r in _lines("info", kind)}
    written = [a for a in after if after[a]["role"] in ("master", "memcached")]
    assert sum(after[a]["keys"] - before[a]["keys"] for a in written) == 50
    assert sum(after[a]["hits"] - before[a]["hits"] for a in written) >= 50
    text = _run("info", kind)
    assert all(address in text for address in every[kind])
    if kind == "cluster":
        assert sum("slots " in r["group"] for r in after.values()) == 3
    if kind == "memcache":
        assert {r["state"] for r in after.values()} == {"ACTIVE"}


def test_info_without_an_alias_covers_every_shardcache_cache(every: dict[str, Any]) -> None:
    aliases = {line["alias"] for line in _lines("info")}
    assert aliases == {"default", *KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_where_names_the_server_that_really_holds_the_key(kind: str, every: dict[str, Any]) -> None:
    cache = caches[kind]
    for i in range(10):
        cache.set(f"user:{i}", "x" * i, timeout=60)
        found = _lines("where", f"user:{i}", "--alias", kind)[0]
        assert found["exists"] is True
        assert 0 < found["ttl"] <= 60
        assert found["key"] == cache.make_key(f"user:{i}")
        host, _, port = _address(found["address"]).rpartition(":")
        if kind == "memcache":
            client = MemcacheClient((host, int(port)))
            assert client.get(found["key"]) is not None
            client.close()
        else:
            with redis.Redis(host=host, port=int(port)) as conn:
                if kind == "cluster":
                    conn.execute_command("READONLY")
                    assert found["slot"] == conn.cluster("keyslot", found["key"])
                assert conn.exists(found["key"]) == 1  # on that very server
    missing = _lines("where", "nobody", "--alias", kind)[0]
    assert (missing["exists"], missing["size"]) == (False, None)


def test_states_and_clear(every: dict[str, Any]) -> None:
    rows = _lines("states")
    assert {row["alias"] for row in rows} == {"memcache"}
    assert {row["address"] for row in rows} == every["memcache"]
    with pytest.raises(CommandError, match="no shard states"):
        _run("states", "--alias", "cluster")
    caches["cluster"].set("a", 1)
    assert _lines("clear", "cluster", "--yes")[0]["scope"] == "the keys under KEY_PREFIX 'ops'"
    assert caches["cluster"].get("a") is None
    with pytest.raises(CommandError, match="no cache 'nope'"):
        _run("info", "nope")


def test_the_flask_cli(
    clean_redis_cluster: RedisCluster, clean_memcached_servers: MemcachedServers
) -> None:
    import flask
    import flask_caching

    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="shardcache_flask.RedisClusterCache",
        CACHE_REDIS_CLUSTER=",".join(clean_redis_cluster.describe()["startup_nodes"]),
        CACHE_KEY_PREFIX="cli:",
    )
    cache = flask_caching.Cache(app)
    mc = flask_caching.Cache(
        app,
        config={
            "CACHE_TYPE": "shardcache_flask.ShardedMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": clean_memcached_servers.addresses,
        },
    )
    with app.app_context():
        cache.set("k", "v")
        mc.set("m", 1)
    runner = app.test_cli_runner()
    info = runner.invoke(args=["shardcache", "info", "--json"])
    assert info.exit_code == 0, info.output
    rows = [json.loads(line) for line in info.output.splitlines()]
    listed = {_address(r["address"]) for r in rows}
    assert listed == {n.address for n in clean_redis_cluster.nodes} | set(
        clean_memcached_servers.addresses
    )
    where = runner.invoke(args=["shardcache", "where", "k", "--json"])
    found = json.loads(where.output)
    assert (found["key"], found["exists"]) == ("cli:k", True)
    host, _, port = found["address"].rpartition(":")
    with redis.Redis(host=host, port=int(port)) as conn:
        assert conn.exists("cli:k") == 1
    states = runner.invoke(args=["shardcache", "states", "--json"])
    assert {json.loads(line)["state"] for line in states.output.splitlines()} == {"ACTIVE"}
    assert "up" in runner.invoke(args=["shardcache", "info"]).output
    cleared = runner.invoke(args=["shardcache", "clear", "--yes"])
    assert cleared.exit_code == 0, cleared.output
    with app.app_context():
        assert cache.get("k") is None


CHILD = """
import json, sys, time, django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["shardcache_django"],
    CACHES={"memcache": json.loads(sys.argv[1])},
)
django.setup()
from django.core.cache import caches
cache = caches["memcache"]
deadline = time.time() + 30
while time.time() < deadline:
    cache.set("routed", "here", 60)
    print(time.time(), "hit" if cache.get("routed") == "here" else "miss", flush=True)
    time.sleep(0.02)
"""


def test_states_set_in_one_process_reroutes_another_within_a_second(
    clean_memcached_servers: MemcachedServers, tmp_path: Any
) -> None:
    import subprocess
    import sys
    import time

    entry = {
        "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
        "LOCATION": clean_memcached_servers.addresses,
        "OPTIONS": {"SHARD_STATES_FILE": str(tmp_path / "states.json")},
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(entry)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split()[1] == "hit"  # running, routed to its shard
        with override_settings(CACHES={"memcache": entry}):
            made = caches["memcache"].make_and_validate_key("routed")
            address = caches["memcache"].core.where(made).address
            changed = time.time()
            _run("states", "set", address, "DOWN", "--alias", "memcache")
            down = {row["address"]: row["state"] for row in _lines("states")}
            assert down[address] == "DOWN"
        for line in child.stdout:
            stamp, outcome = line.split()
            if float(stamp) > changed and outcome == "miss":
                took = float(stamp) - changed
                break
        else:
            raise AssertionError("the other process never saw the shard go DOWN")
        assert took < 1.0, f"the other process saw it after {took:.2f}s"
        with (
            override_settings(CACHES={"memcache": entry}),
            pytest.raises(CommandError, match="no memcache shard"),
        ):
            _run("states", "set", "127.0.0.1:1", "DOWN")
    finally:
        child.kill()
        child.wait(10)


@pytest.mark.parametrize("kind", KINDS)
def test_metrics_move_with_traffic_and_export_as_prometheus(
    kind: str, every: dict[str, Any]
) -> None:
    import asyncio
    import threading

    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from shardcache.metrics import prometheus_text, register_prometheus

    core = caches[kind].core
    before = core.metrics()
    keys = [f"m{i}" for i in range(20)]

    def traffic() -> None:
        for i in range(250):
            core.set(keys[i % 20], i)
            core.get(keys[i % 20])

    threads = [threading.Thread(target=traffic) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asyncio.run(core.aget("m1"))
    core.get_many(keys)
    after = core.metrics()
    moved = sum(after[s].operations for s in after) - sum(
        before[s].operations for s in before if s in after
    )
    # 8 threads x 500 calls, one async get, and get_many: one batch per shard holding keys.
    shards = len(core.topology.group([core.make_key(k) for k in keys]))
    assert moved == 8 * 500 + 1 + shards  # no increment lost between threads
    assert all(m.buckets[-1][1] == m.operations for m in after.values())
    assert all(m.latency_sum > 0 for m in after.values() if m.operations)

    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(after))}
    assert set(families) == {
        "shardcache_operations",
        "shardcache_errors",
        "shardcache_timeouts",
        "shardcache_latency_seconds",
    }
    total = sum(s.value for s in families["shardcache_operations"].samples)
    assert total == sum(m.operations for m in after.values())
    assert len({s.labels["shard"] for s in families["shardcache_operations"].samples}) == len(after)

    registry = CollectorRegistry()
    register_prometheus(core.counters, registry, alias=kind)
    exported = generate_latest(registry).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(exported)}
    assert {s.labels["alias"] for s in parsed["shardcache_operations"].samples} == {kind}
    counts = [s for s in parsed["shardcache_latency_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in counts) == sum(m.operations for m in core.metrics().values())


def test_errors_and_timeouts_are_counted(clean_redis_pool_servers: StandaloneRedis) -> None:
    from shardcache import Cache, HashPool, ShardUnavailableError

    pool = HashPool(clean_redis_pool_servers.urls, read_timeout=0.3)
    cache = Cache(pool)
    shard = pool.shards()[0]
    key = next(f"k{i}" for i in range(1000) if pool.shard_for(cache.make_key(f"k{i}")) is shard)
    cache.set(key, 1)
    server = next(s for s in clean_redis_pool_servers.servers if f":{s.port}/" in shard.id)
    server.pause()
    try:
        with pytest.raises(ShardUnavailableError):
            cache.get(key)
        with pytest.raises(ShardUnavailableError):
            cache.get(key)  # the breaker: an error, not a timeout
    finally:
        server.resume()
    counted = cache.metrics()[shard.id]
    assert (counted.errors, counted.timeouts) == (2, 1)
    assert counted.buckets[-1][1] - dict(counted.buckets)[0.25] >= 1  # the 0.3 s wait
    assert Cache(pool, metrics=False).metrics() == {}
    pool.close()


def test_a_flood_of_undecodable_values_logs_one_line(
    clean_redis_pool_servers: StandaloneRedis, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from shardcache import Cache, HashPool

    pool = HashPool(clean_redis_pool_servers.urls)
    cache = Cache(pool, prefix="flood:")
    for i in range(100):
        key = cache.make_key(f"k{i}")
        pool.shard_for(key).client().set(key, b"\xff\x00 not a value we wrote")
    with caplog.at_level(logging.WARNING, logger="shardcache"):
        assert all(cache.get(f"k{i}") is None for i in range(100))  # misses, not errors
    lines = [r for r in caplog.records if "unreadable value" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].name == "shardcache.cache"  # one logger per module
    pool.close()
