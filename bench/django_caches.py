"""The same Django-level workload through our backends and the ones users would pick instead.

    python -m bench django [--seconds S] [--rounds R]

On the same local servers: our ``ShardedRedisCache`` (3 redis) against django-redis's
``ShardClient`` (same 3) and ``DefaultClient`` (one of them), Django's built-in ``RedisCache``
(one) and raw redis-py; our ``ShardedMemcacheCache`` (3 memcached) against Django's built-in
``PyMemcacheCache`` (same 3). Printed as operations per second and ratios to raw redis-py.
"request: new + get" is what each thread and ASGI request pays: Django makes it a backend
object of its own.
Needs django-redis (``pip install 'shardcache[bench]'``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import django
import redis
from django.conf import settings

from bench.harness import slice_options, throughput
from shardcache.testing import MemcachedServers, StandaloneRedis

VALUE = "v" * 64


def configure(redis_urls: list[str], memcached: list[str]) -> None:
    caches: dict[str, dict[str, Any]] = {
        "ours": {
            "BACKEND": "shardcache_django.cache.ShardedRedisCache",
            "LOCATION": redis_urls,
        },
        "django_redis_shard": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_urls,
            "OPTIONS": {"CLIENT_CLASS": "django_redis.client.ShardClient"},
        },
        "django_redis": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": redis_urls[0],
        },
        "django_builtin_redis": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_urls[0],
        },
        "ours_memcache": {
            "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
            "LOCATION": memcached,
        },
        "django_pymemcache": {
            "BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache",
            "LOCATION": memcached,
        },
    }
    for name, entry in caches.items():
        entry["KEY_PREFIX"] = name  # the same servers, apart: each reads only its own format
    settings.configure(CACHES=caches)
    django.setup()


def workload(name: str) -> dict[str, Callable[[], Any]]:
    from django.core.cache import caches

    cache = caches[name]
    keys = [f"key:{i}" for i in range(100)]
    mapping = dict.fromkeys(keys, VALUE)
    cache.set_many(mapping)
    cache.set("counter", 0)
    return {
        "get": lambda: cache.get("key:7"),
        # What each thread and ASGI request pays: a backend object of its own, then a get.
        "request: new + get": lambda: caches.create_connection(name).get("key:7"),
        "set": lambda: cache.set("key:7", VALUE),
        "get_many(100)": lambda: cache.get_many(keys),
        "set_many(100)": lambda: cache.set_many(mapping),
        "incr": lambda: cache.incr("counter"),
    }


def raw_workload(client: redis.Redis) -> dict[str, Callable[[], Any]]:
    keys = [f"raw:{i}" for i in range(100)]
    client.mset(dict.fromkeys(keys, VALUE))

    def set_many() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE)
        pipe.execute()

    return {
        "get": lambda: client.get("raw:7"),
        "request: new + get": lambda: client.get("raw:7"),  # one client for the process
        "set": lambda: client.set("raw:7", VALUE),
        "get_many(100)": lambda: client.mget(keys),
        "set_many(100)": set_many,
        "incr": lambda: client.incr("raw:counter"),
    }


def main(argv: list[str] | None = None) -> None:
    args = slice_options("django", __doc__, argv, seconds=0.3, rounds=4)

    with StandaloneRedis(3) as pool, MemcachedServers(3) as memcached:
        configure(pool.urls, memcached.addresses)
        sides = {name: workload(name) for name in settings.CACHES}
        sides["raw redis-py"] = raw_workload(redis.Redis.from_url(pool.urls[0]))
        operations = list(sides["raw redis-py"])
        rates: dict[str, dict[str, list[float]]] = {
            side: {op: [] for op in operations} for side in sides
        }
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for op in operations:
                for side in order:
                    calls, elapsed = throughput(sides[side][op], args.seconds)
                    rates[side][op].append(calls / elapsed)
        median = {
            s: {op: statistics.median(v) for op, v in ops.items()} for s, ops in rates.items()
        }
        raw = median["raw redis-py"]
        print(f"{'backend':<22}" + "".join(f"{op:>22}" for op in operations))
        for side, ops in median.items():
            cells = "".join(f"{ops[op]:>12,.0f} ({ops[op] / raw[op]:>5.2f}x)" for op in operations)
            print(f"{side:<22}{cells}")
        print("(ops/s, and the ratio to raw redis-py on one server)")


if __name__ == "__main__":
    main()
