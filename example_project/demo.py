"""The shardcache demo: every topology on real local servers, used through shardcache.

Run it with ``./dev demo``. It brings up the local set (3 standalone redis, a 6-node Redis
Cluster, two Sentinel-managed masters, 3 memcached), prints a health table, then uses each
topology through `shardcache.Cache`, the Django backends (sync and async) and a Flask app
(`example_project.flask_app`), keeps versioned records on the cluster, fails a sentinel master
over while a cache keeps serving, and stops everything. The exit status is 0 only if every
step worked.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

import django
from django.conf import settings

from shardcache import (
    Cache,
    Cluster,
    HashPool,
    MemcacheTopology,
    SentinelClient,
    ShardedMemcacheClient,
    StaticShardManager,
)
from shardcache.testing import LocalTopology, format_health

KEYS = [f"demo:{i}" for i in range(300)]


def exercise(cache: Cache) -> str:
    """Writes, reads, a counter and a clear through one cache; returns how keys spread."""
    values = {key: {"n": i} for i, key in enumerate(KEYS)}
    assert cache.set_many(values, ttl=60) == []
    assert cache.get_many(KEYS) == values
    cache.set("hits", 0)
    assert [cache.incr("hits") for _ in range(3)] == [1, 2, 3]
    spread = Counter(
        {
            shard.id: sum(len(run) for run in runs)
            for shard, runs in cache.topology.group([cache.make_key(k) for k in KEYS]).items()
        }
    )
    assert cache.delete_many(KEYS) == len(KEYS)
    return f"300 keys over {len(spread)} shards ({', '.join(str(n) for n in spread.values())})"


def exercising(make: Callable[[], Cache]) -> Callable[[], str]:
    def run() -> str:
        cache = make()
        try:
            return exercise(cache)
        finally:
            cache.close()

    return run


def configure_django(local: LocalTopology) -> None:
    settings.configure(
        INSTALLED_APPS=["shardcache_django"],
        CACHES={
            "default": {
                "BACKEND": "shardcache_django.cache.ShardedRedisCache",
                "LOCATION": local.standalone.urls,
                "KEY_PREFIX": "django",
            },
            "cluster": {
                "BACKEND": "shardcache_django.cache.RedisClusterCache",
                "LOCATION": ";".join(a for a in local.cluster.describe()["startup_nodes"]),
                "KEY_PREFIX": "django",
            },
            "sentinel": {
                "BACKEND": "shardcache_django.cache.RedisSentinelCache",
                "LOCATION": [f"{h}:{p}" for h, p in local.sentinel.sentinel_addresses],
                "OPTIONS": {"MASTERS": ["bucket0", "bucket1"]},
                "KEY_PREFIX": "django",
            },
            "memcache": {
                "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
                "LOCATION": local.memcached.addresses,
                "KEY_PREFIX": "django",
            },
        },
    )
    django.setup()


def django_round_trips() -> str:
    from django.core import checks
    from django.core.cache import caches

    problems = checks.run_checks(tags=[checks.Tags.caches])
    assert problems == [], problems
    for alias in ("default", "cluster", "sentinel", "memcache"):
        cache = caches[alias]
        cache.set_many({"a": 1, "b": None})
        assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": None}
        assert cache.get_or_set("c", lambda: "computed") == "computed"
        assert cache.incr("a") == 2
        cache.clear()
    return "4 backends: set_many, get_many, get_or_set, incr, clear; manage.py check clean"


def django_async_round_trips() -> str:
    import asyncio

    from django.core.cache import caches

    async def run() -> None:
        for alias in ("default", "cluster", "sentinel"):
            cache = caches[alias]
            await cache.aset_many({"a": 1, "b": None})
            assert await cache.aget_many(["a", "b", "c"]) == {"a": 1, "b": None}
            assert await cache.aget_or_set("c", "computed") == "computed"
            assert await cache.aincr("a") == 2
            await cache.aclear()

    asyncio.run(run())
    return "3 redis backends natively on asyncio: aset_many, aget_many, aget_or_set, aincr"


def flask_round_trips(local: LocalTopology) -> str:
    from example_project.flask_app import cache, computed, create_app

    nodes = ",".join(local.cluster.describe()["startup_nodes"])
    app = create_app(
        {"CACHE_TYPE": "shardcache_flask.RedisClusterCache", "CACHE_REDIS_CLUSTER": nodes}
    )
    client = app.test_client()
    with app.app_context():
        cache.clear()  # this prefix's keys, on every master
    first = client.get("/quote/tea/3").json
    assert client.get("/quote/tea/3").json == first  # served by @cache.cached
    assert computed == ["quote(tea, 3)", "price(tea, 3)"], computed
    client.post("/reprice/tea/3")
    client.get("/quote/tea/3")
    assert computed[2:] == ["quote(tea, 3)", "price(tea, 3)"], computed
    return "example_project.flask_app on the cluster: cached view, memoize, delete_memoized"


def record_store(local: LocalTopology) -> str:
    from shardcache.records import Record, RedisRecordStore

    store = RedisRecordStore(Cluster(local.cluster.describe()["startup_nodes"]), name="demo")
    store.clear()
    server_version = store.put([Record("job", f"j{i}", {"state": "queued"}) for i in range(3)])
    store.patch([Record("job", "j1", {"state": "running"})], ["state"])
    store.put([Record("job", "j2", deleted=True)])
    _, version, current = store.sync_latest("job", {"state": "queued"})
    assert [r.id for r in current] == ["j0"]
    changes = [(c.version, c.id) for c in store.sync("job", server_version, 0)]
    assert changes == [(1, "j0"), (2, "j1"), (3, "j2"), (4, "j1"), (5, "j2")], changes
    assert store.lease("scheduler", "demo", 5)
    assert not store.lease("scheduler", "other", 5)
    store.close()
    return f"on the cluster: 5 versions in order, a patch, a tombstone, a lease (at v{version})"


def failover_while_serving(local: LocalTopology) -> str:
    client = SentinelClient(local.sentinel.sentinel_addresses, ["bucket0"])
    cache = Cache(client, prefix="failover:")
    cache.set("k", "before")
    old = client.masters_now()["bucket0"]
    new = local.sentinel.failover("bucket0", settle=False)
    deadline = time.monotonic() + 15
    while client.masters_now()["bucket0"] == old and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.masters_now()["bucket0"] == f"{new[0]}:{new[1]}"
    assert cache.get("k") == "before"
    assert cache.set("k", "after")
    assert cache.get("k") == "after"
    client.close()
    return f"bucket0 moved {old} -> {new[0]}:{new[1]}; the cache followed with no error"


def step(name: str, action: Callable[[], str]) -> bool:
    began = time.perf_counter()
    try:
        result = action()
    except Exception as exc:  # the demo reports every failure and carries on
        print(f"  FAIL  {name:<22} {exc!r}")
        return False
    print(f"  ok    {name:<22} {result}  ({(time.perf_counter() - began) * 1000:.0f} ms)")
    return True


def main() -> int:
    print("shardcache demo: starting the local servers ...")
    with LocalTopology() as local:
        print(f"19 servers ready in {local.startup_seconds:.1f}s\n")
        rows = local.health()
        print(format_health(rows))
        memcache = ShardedMemcacheClient(StaticShardManager(local.memcached.addresses))
        caches: dict[str, Callable[[], Cache]] = {
            "hash pool": lambda: Cache(HashPool(local.standalone.urls, hash="ketama"), prefix="d:"),
            "redis cluster": lambda: Cache(Cluster(local.cluster.describe()["startup_nodes"])),
            "sentinel masters": lambda: Cache(
                SentinelClient(local.sentinel.sentinel_addresses, ["bucket0", "bucket1"])
            ),
            "sharded memcache": lambda: Cache(MemcacheTopology(memcache)),
        }
        print("\nshardcache.Cache on each topology:")
        results = [all(row.ok for row in rows)]
        for name, make in caches.items():
            results.append(step(name, exercising(make)))
        print("\nDjango CACHES backends:")
        configure_django(local)
        results.append(step("django", django_round_trips))
        results.append(step("django async", django_async_round_trips))
        print("\nFlask-Caching backends:")
        results.append(step("flask", lambda: flask_round_trips(local)))
        print("\nrecord store:")
        results.append(step("records", lambda: record_store(local)))
        print("\nfailover:")
        results.append(step("sentinel failover", lambda: failover_while_serving(local)))
        print("\nstopping ...")
    print("done: every server healthy, every step worked" if all(results) else "done: FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
