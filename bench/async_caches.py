"""The Django async cache API (``aget``, ``aset`` ...) through our backends and the others.

    python -m bench async [--seconds S] [--rounds R] [--tasks N]

Django's own backends and django-redis inherit ``BaseCache``'s async methods, which run the
sync call in a worker thread (``sync_to_async``); ours speak redis-py's asyncio protocol.
Two workloads on the same 3 local redis servers, in one event loop: one task awaiting calls
back to back, and ``--tasks`` concurrent tasks (what an ASGI server does under load). Ratios
are to raw ``redis.asyncio.Redis`` on one server. Needs django-redis (``shardcache[bench]``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

from bench.django_caches import VALUE, configure
from shardcache.testing import MemcachedServers, StandaloneRedis

Op = Callable[[], Awaitable[Any]]
SIDES = ["ours", "django_redis_shard", "django_redis", "django_builtin_redis"]


def workload(cache: Any) -> dict[str, Op]:
    keys = [f"key:{i}" for i in range(100)]
    mapping = dict.fromkeys(keys, VALUE)
    return {
        "aget": lambda: cache.aget("key:7"),
        "aset": lambda: cache.aset("key:7", VALUE),
        "aget_many(100)": lambda: cache.aget_many(keys),
        "aset_many(100)": lambda: cache.aset_many(mapping),
        "aincr": lambda: cache.aincr("counter"),
    }


def raw_workload(client: redis.asyncio.Redis) -> dict[str, Op]:
    keys = [f"raw:{i}" for i in range(100)]

    async def set_many() -> None:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, VALUE)
        await pipe.execute()

    return {
        "aget": lambda: client.get("raw:7"),
        "aset": lambda: client.set("raw:7", VALUE),
        "aget_many(100)": lambda: client.mget(keys),
        "aset_many(100)": set_many,
        "aincr": lambda: client.incr("raw:counter"),
    }


async def rate(op: Op, seconds: float, tasks: int) -> float:
    """Calls per second of ``op`` awaited back to back by each of ``tasks`` tasks."""
    deadline = time.perf_counter() + seconds
    counts = [0] * tasks

    async def worker(i: int) -> None:
        while time.perf_counter() < deadline:
            for _ in range(5):
                await op()
            counts[i] += 5

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return sum(counts) / (time.perf_counter() - began)


async def run(args: argparse.Namespace, urls: list[str]) -> None:
    from django.core.cache import caches

    sides: dict[str, dict[str, Op]] = {}
    for name in SIDES:
        cache = caches[name]
        await cache.aset_many(dict.fromkeys([f"key:{i}" for i in range(100)], VALUE))
        await cache.aset("counter", 0)
        sides[name] = workload(cache)
    raw = redis.asyncio.Redis.from_url(urls[0], max_connections=args.tasks + 1)
    await raw.mset(dict.fromkeys([f"raw:{i}" for i in range(100)], VALUE))
    sides["raw redis.asyncio"] = raw_workload(raw)
    operations = list(sides["raw redis.asyncio"])
    for tasks in (1, args.tasks):
        rates: dict[str, dict[str, list[float]]] = {s: {op: [] for op in operations} for s in sides}
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for op in operations:
                for side in order:
                    rates[side][op].append(await rate(sides[side][op], args.seconds, tasks))
        median = {
            s: {op: statistics.median(v) for op, v in ops.items()} for s, ops in rates.items()
        }
        base = median["raw redis.asyncio"]
        print(f"\n{tasks} task(s) awaiting calls back to back")
        print(f"{'backend':<22}" + "".join(f"{op:>23}" for op in operations))
        for side, ops in median.items():
            cells = "".join(f"{ops[op]:>12,.0f} ({ops[op] / base[op]:>6.2f}x)" for op in operations)
            print(f"{side:<22}{cells}")
    print("(ops/s, and the ratio to raw redis.asyncio on one server)")
    await raw.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench async", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=3, help="slices per side")
    parser.add_argument("--tasks", type=int, default=32, help="concurrent tasks, second run")
    args = parser.parse_args(argv)
    with StandaloneRedis(3) as pool, MemcachedServers(3) as memcached:
        configure(pool.urls, memcached.addresses)
        asyncio.run(run(args, pool.urls))


if __name__ == "__main__":
    main()
