"""Through Flask-Caching: our backends against Flask-Caching's own, on the same servers.

    python -m bench flask [--seconds S] [--rounds R]

Our ``RedisClusterCache`` against Flask-Caching's ``RedisClusterCache`` on the same local
6-node cluster, and our ``ShardedMemcacheCache`` against its ``MemcachedCache`` (given a
pymemcache ``HashClient``) on the same 3 memcached. Both sides are the backend objects
Flask-Caching builds from an app's config (its ``Cache`` methods only forward to them).
Theirs cannot read 100 keys of different slots in one ``get_many``, so the baseline for that
row is what is left to its users: a loop of single-key gets. Finally ``clear()`` is checked
on every master. Their pymemcache client is told to wait for replies, as ours does.

Targets: single keys >= 2x theirs; get_many(100) across slots works and beats their loop.
"""

from __future__ import annotations

from typing import Any

import flask_caching
from flask import Flask
from pymemcache.client.hash import HashClient
from pymemcache.serde import pickle_serde

from bench.harness import Case, compare, slice_options
from shardcache.testing import MemcachedServers, RedisCluster

TARGETS = {"get": 2.0, "set": 2.0, "get_many(100)": 1.0}
VALUE = "v" * 64
KEYS = [f"key:{i}" for i in range(100)]


def make(config: dict[str, Any]) -> Any:
    """The backend Flask-Caching builds from ``config`` (through the backend's factory)."""
    app = Flask(__name__)
    app.config.update(config)
    cache = flask_caching.Cache(app)
    return app.extensions["cache"][cache]


def workload(cache: Any, *, loop_get_many: bool = False) -> dict[str, Any]:
    mapping = dict.fromkeys(KEYS, VALUE)
    cache.set_many(mapping)

    def get_many() -> Any:
        if loop_get_many:
            return [cache.get(key) for key in KEYS]
        return cache.get_many(*KEYS)

    return {
        "get": lambda: cache.get("key:7"),
        "set": lambda: cache.set("key:7", VALUE),
        "get_many(100)": get_many,
        "set_many(100)": lambda: cache.set_many(mapping),
    }


def pairs(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Case]:
    return {name: (ours[name], theirs[name]) for name in ours}


def main(argv: list[str] | None = None) -> None:
    args = slice_options("flask", __doc__, argv, seconds=0.3, rounds=4)
    with RedisCluster() as cluster, MemcachedServers(3) as memcached:
        nodes = ",".join(node.address for node in cluster.nodes)
        ours = make(
            {
                "CACHE_TYPE": "shardcache_flask.RedisClusterCache",
                "CACHE_REDIS_CLUSTER": nodes,
                "CACHE_KEY_PREFIX": "ours:",
            }
        )
        theirs = make(
            {
                "CACHE_TYPE": "RedisClusterCache",
                "CACHE_REDIS_CLUSTER": nodes,
                "CACHE_KEY_PREFIX": "theirs:",
            }
        )
        try:
            theirs.set_many(dict.fromkeys(KEYS, VALUE))
            theirs.get_many(*KEYS)
            verdict = "works"
        except Exception as exc:
            verdict = f"fails: {type(exc).__name__}: {str(exc)[:70]}"
        print(f"Flask-Caching RedisClusterCache.get_many of 100 keys: {verdict}")
        print("\nRedis Cluster (6 nodes), ours vs Flask-Caching's RedisClusterCache")
        compare(
            pairs(workload(ours), workload(theirs, loop_get_many=True)),
            theirs="Flask-Caching",
            targets=TARGETS,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        for name, cache in [("ours", ours), ("theirs", theirs)]:
            try:
                cache.clear()
                error = ""
            except Exception as exc:
                error = f" (clear raised {type(exc).__name__}: {str(exc)[:60]})"
            left = 0
            for master in cluster.masters:
                with master.client() as client:
                    left += len(client.keys(f"{name}:*"))
            print(f"clear() by {name}: {left} of its keys left on the masters{error}")

        mc_ours = make(
            {
                "CACHE_TYPE": "shardcache_flask.ShardedMemcacheCache",
                "CACHE_MEMCACHED_SERVERS": memcached.addresses,
                "CACHE_KEY_PREFIX": "ours:",
            }
        )
        client = HashClient(
            [tuple(a.rsplit(":", 1)) for a in memcached.addresses],
            serde=pickle_serde,
            default_noreply=False,  # as ours: a set waits for "STORED"
        )
        mc_theirs = make(
            {
                "CACHE_TYPE": "MemcachedCache",
                "CACHE_MEMCACHED_SERVERS": client,
                "CACHE_KEY_PREFIX": "theirs:",
            }
        )
        print("\nmemcached (3 servers), ours vs Flask-Caching's MemcachedCache (pymemcache)")
        compare(
            pairs(workload(mc_ours), workload(mc_theirs)),
            theirs="Flask-Caching",
            targets={},
            seconds=args.seconds,
            rounds=args.rounds,
        )


if __name__ == "__main__":
    main()
