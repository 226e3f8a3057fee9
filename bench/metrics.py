"""The cost of the per-shard counters (`shardcache.metrics`): the same `Cache` calls with
counters on and off, interleaved on the same servers.

    python -m bench metrics [--seconds S] [--rounds R]

First the call rates (on / off, so a ratio of 1.0 means no cost), then the client CPU per
call of each side (``time.thread_time``), which the round trip does not blur.

Targets (ratios): get, set and get_many(100) with counters >= 0.97x without.
"""

from __future__ import annotations

import statistics
import timeit
from time import perf_counter

from bench.harness import compare, cost_per_call, slice_options
from shardcache import Cache, HashPool
from shardcache.drivers import Exec, _count
from shardcache.metrics import Metrics
from shardcache.testing import StandaloneRedis

TARGETS = {"get": 0.97, "set": 0.97, "get_many(100)": 0.97}
VALUE = "v" * 64


def _one_count(pool: HashPool) -> float:
    """What counting one call costs the driver: two clock reads and `drivers._count`
    of an `Exec` step, best of seven runs (µs)."""
    metrics = Metrics()
    step = Exec(pool.shards()[0], ("GET", b"k"), b"k", True)

    def count() -> None:
        began = perf_counter()
        _count(metrics, step, perf_counter() - began, b"v")

    bare = min(timeit.repeat(lambda: None, number=200_000, repeat=7))
    counted = min(timeit.repeat(count, number=200_000, repeat=7))
    return (counted - bare) / 200_000 * 1e6


def main(argv: list[str] | None = None) -> None:
    args = slice_options("metrics", __doc__, argv)
    with StandaloneRedis(3) as servers:
        pool = HashPool(servers.urls)
        counted = Cache(pool, prefix="b:")
        bare = Cache(pool, prefix="b:", metrics=False)
        keys = [f"key:{i}" for i in range(100)]
        counted.set_many(dict.fromkeys(keys, VALUE))
        cases = {
            "get": (lambda: counted.get("key:7"), lambda: bare.get("key:7")),
            "set": (lambda: counted.set("key:7", VALUE), lambda: bare.set("key:7", VALUE)),
            "get_many(100)": (lambda: counted.get_many(keys), lambda: bare.get_many(keys)),
        }
        compare(
            cases,
            theirs="no counters",
            targets=TARGETS,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        print(f"\n{'client CPU per call':<20}{'counters µs':>13}{'none µs':>10}{'cost':>8}")
        for name, (on, off) in cases.items():
            cpu: dict[str, list[float]] = {"on": [], "off": []}
            for round_ in range(args.rounds):
                order = [("on", on), ("off", off)]
                for side, fn in order if round_ % 2 == 0 else reversed(order):
                    cpu[side].append(cost_per_call(fn, args.seconds)[1])
            with_, without = statistics.median(cpu["on"]), statistics.median(cpu["off"])
            print(f"{name:<20}{with_:>13.2f}{without:>10.2f}{with_ - without:>+8.2f}")
        calls = sum(m.operations for m in counted.metrics().values())
        print(f"\n({calls:,} calls counted)")
        print(f"one count alone (timed apart, no round trip): {_one_count(pool):.2f} µs")
        pool.close()
