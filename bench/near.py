"""The near cache (`shardcache.near`): its speed against redis-py on the same server, its
cost on a miss-heavy load, how soon an invalidation lands, and its memory bound.

    python -m bench near [--seconds S] [--rounds R] [--coherence SECONDS] [speed coherence memory]

1. Speed, interleaved on one server:
   - ``get`` over 1,000 hot keys of 1 KiB: the near cache against raw redis-py ``Redis.get``
     (target >= 20x), and against redis-py's own client-side cache (``cache_config``, RESP3,
     standalone sync only) where this redis-py has one;
   - ``get_many(100)`` of hot keys against raw redis-py ``mget`` of the same keys (>= 10x);
   - a miss-heavy load, keys drawn uniformly from 1,000,000 (each one on the server): the
     near cache against the same `Cache` without one (target >= 0.91x, i.e. <= 10% slower).
2. Coherence: a writer in another process updates 20 hot keys (each value says when it was
   acknowledged) while 8 reader threads read them through the near cache. Reported: the
   delay from a write's acknowledgement to the first read that shows it (p50, p99, max;
   target p99 < 5 ms), and how many reads returned a value older than that max.
3. Memory: six passes over 100,000 distinct 1 KiB keys through a near cache bounded to
   20,000 entries and 8 MiB, each kept from its first read (``admit_first``): the process's
   RSS before and after each pass, its peak, and the bound's own count of bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing
import random
import statistics
import threading
import time
from typing import Any

import redis

from bench.harness import compare
from shardcache import Cache, HashPool
from shardcache.testing import StandaloneRedis

HOT = 1000
VALUE = b"x" * 1024
UNIVERSE = 1_000_000


def _options(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench near", description=__doc__)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=6, help="slices per side")
    parser.add_argument("--coherence", type=float, default=5.0, help="seconds of the writer")
    parser.add_argument(
        "parts", nargs="*", default=["speed", "coherence", "memory"], help="which parts to run"
    )
    return parser.parse_args(argv)


def _ready(cache: Cache) -> None:
    for shard in cache.topology.shards():
        tracker = shard.leaf().track()  # type: ignore[attr-defined]
        assert tracker is not None
        assert tracker.wait_ready(10)


def _cycle(keys: list[Any]) -> Any:
    state = {"i": 0}
    count = len(keys)

    def following() -> Any:
        i = state["i"] = (state["i"] + 1) % count
        return keys[i]

    return following


def speed(url: str, args: argparse.Namespace) -> None:
    raw = redis.Redis.from_url(url)
    pool = HashPool([url])
    near = Cache(pool, prefix="b:", near_cache={"max_entries": 20_000})
    untracked = HashPool([url])  # its own connections: no tracking on the server either
    bare = Cache(untracked, prefix="b:")
    hot = [f"hot:{i}" for i in range(HOT)]
    near.set_many(dict.fromkeys(hot, VALUE))
    _ready(near)
    for key in hot:  # warm: every hot key held
        near.get(key)
        near.get(key)
    stored = [near.make_key(key) for key in hot]
    next_key, next_raw = _cycle(hot), _cycle(stored)
    batches = [hot[i : i + 100] for i in range(0, HOT, 100)]
    raw_batches = [stored[i : i + 100] for i in range(0, HOT, 100)]
    next_batch, next_raw_batch = _cycle(batches), _cycle(raw_batches)
    print("1. speed (one redis-server on loopback)")

    def hundred_gets() -> None:
        for key in next_raw_batch():
            raw.get(key)

    compare(
        {
            "get": (lambda: near.get(next_key()), lambda: raw.get(next_raw())),
            "get_many(100)": (lambda: near.get_many(next_batch()), hundred_gets),
        },
        theirs="raw redis-py get",
        targets={"get": 20.0, "get_many(100)": 10.0},
        seconds=args.seconds,
        rounds=args.rounds,
    )
    compare(
        {
            "get_many(100)": (
                lambda: near.get_many(next_batch()),
                lambda: raw.mget(next_raw_batch()),
            )
        },
        theirs="raw redis-py mget",
        targets={},
        seconds=args.seconds,
        rounds=args.rounds,
    )
    try:
        from redis.cache import CacheConfig

        theirs = redis.Redis.from_url(url, protocol=3, cache_config=CacheConfig(max_size=20_000))
        for stored_key in stored:
            theirs.get(stored_key)
    except (ImportError, TypeError, redis.RedisError) as exc:
        print(f"   (redis-py's client-side cache is not available here: {exc})")
    else:
        compare(
            {"get": (lambda: near.get(next_key()), lambda: theirs.get(next_raw()))},
            theirs="redis-py client cache",
            targets={},
            seconds=args.seconds,
            rounds=args.rounds,
        )
        theirs.close()
    print(f"\n   filling {UNIVERSE:,} keys for the miss-heavy load ...")
    pipe = raw.pipeline(transaction=False)
    small = near.codec.encode("v" * 16, b"")  # as shardcache stores it (nothing signed here)
    for i in range(UNIVERSE):
        pipe.set(f"b:u:{i}", small)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    rng = random.Random(7)
    compare(
        {
            "miss-heavy get": (
                lambda: near.get(f"u:{rng.randrange(UNIVERSE)}"),
                lambda: bare.get(f"u:{rng.randrange(UNIVERSE)}"),
            )
        },
        theirs="no near cache",
        targets={"miss-heavy get": 0.91},
        seconds=args.seconds,
        rounds=args.rounds,
    )
    stats = near.near.stats()  # type: ignore[union-attr]
    print(f"   near cache: {stats.entries:,} entries, {stats.hits:,} hits, {stats.misses:,} misses")
    raw.flushall()
    raw.close()
    pool.close()
    untracked.close()


def _writer(url: str, keys: int, seconds: float, acks: Any, ready: Any) -> None:
    cache = Cache(HashPool([url]), prefix="c:")
    ready.wait()
    seq, done = 0, time.monotonic() + seconds
    log = []
    while time.monotonic() < done:
        seq += 1
        key = f"k{seq % keys}"
        cache.set(key, seq)
        log.append((key, seq, time.monotonic()))  # CLOCK_MONOTONIC: one clock for all
        time.sleep(0.0005)
    acks.put(log)
    cache.close()


def coherence(url: str, args: argparse.Namespace) -> None:
    keys, readers = 20, 8
    pool = HashPool([url])
    cache = Cache(pool, prefix="c:", near_cache=True)
    for i in range(keys):
        cache.set(f"k{i}", 0)
    _ready(cache)
    context = multiprocessing.get_context("spawn")
    acks, ready = context.Queue(), context.Event()
    writer = context.Process(target=_writer, args=(url, keys, args.coherence, acks, ready))
    writer.start()
    stop = threading.Event()
    reads: list[list[tuple[str, int, float]]] = [[] for _ in range(readers)]

    def read(mine: list[tuple[str, int, float]]) -> None:
        rng = random.Random()
        while not stop.is_set():
            key = f"k{rng.randrange(keys)}"
            began = time.monotonic()
            mine.append((key, cache.get(key), began))

    threads = [threading.Thread(target=read, args=(reads[i],)) for i in range(readers)]
    for thread in threads:
        thread.start()
    ready.set()
    log = acks.get(timeout=args.coherence + 60)
    writer.join(30)
    stop.set()
    for thread in threads:
        thread.join()
    # Per key: the writes in order, and the reads in order of their start.
    writes: dict[str, list[tuple[int, float]]] = {}
    for key, seq, acked in log:
        writes.setdefault(key, []).append((seq, acked))
    seen: dict[str, list[tuple[float, int]]] = {}
    for mine in reads:
        for key, value, began in mine:
            seen.setdefault(key, []).append((began, value))
    delays = []
    for key, history in writes.items():
        observed = sorted(seen.get(key, []))
        j = 0
        for seq, acked in history:
            while j < len(observed) and (observed[j][0] < acked or observed[j][1] < seq):
                j += 1
            if j < len(observed):
                delays.append(observed[j][0] - acked)
    delays.sort()
    worst = delays[-1] if delays else 0.0
    stale = 0
    total = 0
    for key, observed in seen.items():
        history = writes.get(key, [])
        for began, value in observed:
            total += 1
            # A read is stale past the bound if a newer write was acknowledged more than
            # `worst` before it began.
            newer = [acked for seq, acked in history if seq > value and acked < began - worst]
            stale += bool(newer)
    p50 = statistics.median(delays) * 1000
    p99 = delays[int(len(delays) * 0.99)] * 1000
    print(
        f"\n2. coherence: {len(log):,} writes from another process, {total:,} reads in "
        f"{readers} threads"
    )
    print(
        f"   write to first read showing it: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(target < 5 ms {'ok' if p99 < 5 else 'MISS'}), max {worst * 1000:.2f} ms"
    )
    print(f"   reads older than that max: {stale}")
    pool.close()


def _status(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss() -> float:
    return _status("VmRSS")


def _peak() -> float:
    return _status("VmHWM")


def _reset_peak() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # Linux: the peak (VmHWM) starts again from the current RSS


def memory(url: str) -> None:
    pool = HashPool([url])
    bound = {"max_entries": 20_000, "max_bytes": 8 << 20, "admit_first": True}
    cache = Cache(pool, prefix="m:", near_cache=bound)
    filler = redis.Redis.from_url(url)
    count, passes = 100_000, 6
    pipe = filler.pipeline(transaction=False)
    encoded = cache.codec.encode(VALUE, b"")
    for i in range(count):
        pipe.set(f"m:{i}", encoded)
        if i % 10_000 == 9_999:
            pipe.execute()
    pipe.execute()
    del pipe
    _ready(cache)
    gc.collect()
    before = _rss()
    _reset_peak()
    after_each = []
    for _ in range(passes):
        for i in range(count):
            cache.get(str(i))
        after_each.append(f"{_rss():.0f}")
    peak = _peak()
    stats = cache.near.stats()  # type: ignore[union-attr]
    print(
        f"\n3. memory: {passes} passes over {count:,} distinct 1 KiB keys through a near cache "
        f"of 8 MiB ({passes * count:,} reads)"
    )
    print(
        f"   held {stats.entries:,} entries, {stats.bytes / 2**20:.1f} MiB by its count; "
        f"{stats.evictions:,} evictions; RSS {before:.0f} MiB before, after each pass "
        f"{', '.join(after_each)} MiB; peak {peak:.0f} MiB"
    )
    filler.flushall()
    filler.close()
    pool.close()


def main(argv: list[str] | None = None) -> None:
    args = _options(argv)
    with StandaloneRedis(1) as servers:
        url = servers.urls[0]
        if "speed" in args.parts:
            speed(url, args)
        if "coherence" in args.parts:
            coherence(url, args)
        if "memory" in args.parts:
            memory(url)
