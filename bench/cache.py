"""Cache on a 3-server HashPool against raw redis-py on the same servers, interleaved.

    python -m bench cache [--seconds S] [--rounds R]

Each operation runs in alternating slices (ours, redis-py, ours, ...) so that both see the
same machine load; the median slice rate of each side is printed with their ratio. The
baselines are what a user would otherwise write: ``redis.Redis.get`` / ``set`` on one
server, one ``MGET`` of the same 100 keys on a single server, and a pipeline of 100 ``SET``.
For get and set, the last column is the floor: a bare redis-py ``Connection`` doing
``send_command`` + ``read_response``, the fastest any client built on redis-py can go (our
ratio to it shows how much of the round trip is still ours).

Targets (ratios): get and set >= 1.6x; get_many(100) over 3 shards >= 1.2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection

from shardcache import Cache, HashPool
from shardcache.testing import StandaloneRedis

TARGETS = {"get": 1.6, "set": 1.6, "get_many(100)": 1.2}
VALUE = "v" * 64


def throughput(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``fn`` for about ``seconds``; return (calls, elapsed)."""
    calls = 0
    began = time.perf_counter()
    deadline = began + seconds
    while True:
        for _ in range(50):
            fn()
        calls += 50
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench cache", description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=6, help="slices per side and operation")
    args = parser.parse_args(argv)

    with StandaloneRedis(3) as servers:
        pool = HashPool(servers.urls)
        cache = Cache(pool, prefix="b:")
        raw = redis.Redis.from_url(servers.urls[0])
        keys = [f"key:{i}" for i in range(100)]
        raw_keys = [f"raw:{key}" for key in keys]
        cache.set_many(dict.fromkeys(keys, VALUE))
        raw.mset({key: VALUE.encode() for key in raw_keys})
        raw_pipeline_items = [(key, VALUE.encode()) for key in raw_keys]

        def raw_set_many() -> None:
            pipe = raw.pipeline(transaction=False)
            for key, value in raw_pipeline_items:
                pipe.set(key, value)
            pipe.execute()

        mapping = dict.fromkeys(keys, VALUE)
        floor = Connection(host="127.0.0.1", port=raw.connection_pool.connection_kwargs["port"])

        def floor_get() -> Any:
            floor.send_command("GET", "raw:key:7")
            return floor.read_response()

        def floor_set() -> Any:
            floor.send_command("SET", "raw:key:7", VALUE)
            return floor.read_response()

        floors: dict[str, Callable[[], Any]] = {"get": floor_get, "set": floor_set}
        cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
            "get": (lambda: cache.get("key:7"), lambda: raw.get("raw:key:7")),
            "set": (lambda: cache.set("key:7", VALUE), lambda: raw.set("raw:key:7", VALUE)),
            "get_many(100)": (lambda: cache.get_many(keys), lambda: raw.mget(raw_keys)),
            "set_many(100)": (lambda: cache.set_many(mapping), raw_set_many),
        }
        assert cache.get_many(keys) == mapping  # both sides read real data

        print(
            f"{'operation':<15}{'shardcache/s':>13}{'redis-py/s':>12}{'ratio':>8}"
            f"{'target':>8}{'':>6}{'floor/s':>10}{'ours/floor':>12}"
        )
        for name, (ours, theirs) in cases.items():
            sides = {"ours": ours, "theirs": theirs}
            if name in floors:
                sides["floor"] = floors[name]
            rates: dict[str, list[float]] = {side: [] for side in sides}
            for round_ in range(args.rounds):
                order = list(sides.items())
                for side, fn in order if round_ % 2 == 0 else reversed(order):
                    calls, elapsed = throughput(fn, args.seconds)
                    rates[side].append(calls / elapsed)
            rate = {side: statistics.median(samples) for side, samples in rates.items()}
            ratio = rate["ours"] / rate["theirs"]
            target = TARGETS.get(name)
            verdict = (
                f"{target:>7.1f}x {'ok' if ratio >= target else 'MISS':<5}" if target else " " * 14
            )
            line = (
                f"{name:<15}{rate['ours']:>13,.0f}{rate['theirs']:>12,.0f}{ratio:>7.2f}x{verdict}"
            )
            if "floor" in rate:
                line += f"{rate['floor']:>10,.0f}{rate['ours'] / rate['floor']:>11.2f}x"
            print(line)
        floor.disconnect()
        raw.close()
        pool.close()


if __name__ == "__main__":
    main()
