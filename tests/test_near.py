"""The near cache on real servers, every Redis topology: hits served in the process, and
never a value the server has replaced once its invalidation had time to arrive; what empties
it (FLUSHALL, a lost listener, a restart, a slot moving, a failover); its bounds; sync and
asyncio; Django and Flask configuration; forked children; memcache refused."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

import flask
import flask_caching
import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from shardcache import Cache, ConfigurationError, ShardUnavailableError
from shardcache.connections import RedisShard
from shardcache.near import NearCache, Tracker
from shardcache.registry import Registry
from shardcache.testing import RedisCluster, RedisSentinel, StandaloneRedis, wait_until

KINDS = ["hashpool", "cluster", "sentinel"]
BOUND = 2.0  # seconds an invalidation may take on a busy 2-core machine (measured: ~1 ms)


def _entry(request: pytest.FixtureRequest, kind: str) -> tuple[list[str], dict[str, Any]]:
    if kind == "hashpool":
        pool: StandaloneRedis = request.getfixturevalue("clean_redis_pool_servers")
        return pool.urls, {}
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("clean_redis_cluster")
        return cluster.describe()["startup_nodes"][:1], {}
    sentinel: RedisSentinel = request.getfixturevalue("clean_redis_sentinel")
    described = sentinel.describe()
    return described["sentinels"], {"MASTERS": described["names"]}


def _server_of(servers: StandaloneRedis, tracker: Tracker) -> Any:
    """The process of the server ``tracker`` listens to."""
    return next(s for s in servers.servers if f":{s.port}/" in tracker.name)


class Pair:
    """A near cache, and a writer on a topology of its own (another process, as far as the
    servers can tell: other connections, no shared near cache)."""

    def __init__(self, kind: str, location: list[str], options: dict[str, Any], **near: Any):
        self.kind = kind
        self.mine, self.theirs = Registry(), Registry()
        near_options = {"MAX_AGE": 600, **near}
        self.cache = self.mine.cache(kind, location, {**options, "NEAR_CACHE": near_options})
        self.writer = self.theirs.cache(kind, location, options)
        assert self.cache.near is not None
        self.near: NearCache = self.cache.near

    def close(self) -> None:
        self.mine.close()
        self.theirs.close()

    def leaf_of(self, key: str) -> RedisShard:
        leaf = self.cache.topology.shard_for(self.cache.make_key(key)).leaf()  # type: ignore[attr-defined]
        assert isinstance(leaf, RedisShard)
        return leaf

    def tracker_of(self, key: str) -> Tracker:
        tracker = self.leaf_of(key).track()
        assert tracker is not None
        assert tracker.wait_ready(10), f"{tracker} never subscribed"
        return tracker

    def cached(self, key: str, value: Any) -> None:
        """Write ``key`` through the writer and read it until the near cache holds it."""
        # (A write is not retried on a pooled connection that a restart left stale.)
        wait_until(
            lambda: self.writer.set(key, value),
            timeout=10,
            what=f"{key} written",
            errors=(ShardUnavailableError,),
        )
        self.tracker_of(key)
        wait_until(
            lambda: self.cache.get(key) == value and self.held(key),
            timeout=10,
            what=f"{key} in the near cache",
        )

    def held(self, key: str) -> bool:
        return self.cache.make_key(key) in self.near._entries

    def sees(self, key: str, value: Any, what: str) -> None:
        wait_until(lambda: self.cache.get(key) == value, timeout=BOUND, what=what)


@pytest.fixture
def pair(request: pytest.FixtureRequest, kind: str) -> Iterator[Pair]:
    location, options = _entry(request, kind)
    made = Pair(kind, location, options)
    yield made
    made.close()


# --- what it does -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_hot_key_is_served_in_process_until_another_client_writes_it(pair: Pair) -> None:
    pair.cached("hot", {"v": 1})
    hits = pair.near.hits
    for _ in range(100):
        assert pair.cache.get("hot") == {"v": 1}
    assert pair.near.hits == hits + 100  # not one of them went to the server
    pair.writer.set("hot", {"v": 2})
    pair.sees("hot", {"v": 2}, "the invalidation")
    pair.writer.delete("hot")
    pair.sees("hot", None, "the delete's invalidation")


@pytest.mark.parametrize("kind", KINDS)
def test_a_returned_value_is_never_shared_between_callers(pair: Pair) -> None:
    pair.cached("shared", {"items": [1, 2]})
    first = pair.cache.get("shared")
    first["items"].append(3)
    assert pair.cache.get("shared") == {"items": [1, 2]}
    assert pair.cache.get_many(["shared"])["shared"] == {"items": [1, 2]}


@pytest.mark.parametrize("kind", KINDS)
def test_writes_through_this_cache_show_at_once(pair: Pair) -> None:
    pair.cached("mine", 1)
    for value in range(2, 40):
        pair.cache.set("mine", value)
        assert pair.cache.get("mine") == value
    pair.cache.incr("mine")
    assert pair.cache.get("mine") == 40
    pair.cache.set_many({"mine": "many"})
    assert pair.cache.get("mine") == "many"
    pair.cache.delete_many(["mine"])
    assert pair.cache.get("mine") is None


@pytest.mark.parametrize("kind", KINDS)
def test_entries_expire_with_the_server_ttl(pair: Pair) -> None:
    pair.writer.set("brief", "v", ttl=1.0)
    pair.tracker_of("brief")
    wait_until(
        lambda: pair.cache.get("brief") == "v" and pair.held("brief"), timeout=10, what="held"
    )
    wait_until(lambda: pair.cache.get("brief") is None, timeout=5, what="expiry")
    entry = pair.near._entries.get(pair.cache.make_key("brief"))
    assert entry is None or entry[1] <= time.monotonic()


@pytest.mark.parametrize("kind", KINDS)
def test_get_many_serves_hits_and_fetches_the_rest(pair: Pair) -> None:
    keys = [f"m{i}" for i in range(40)]
    pair.writer.set_many({key: key.upper() for key in keys})
    for key in keys:
        pair.tracker_of(key)
    wanted = {key: key.upper() for key in keys}
    wait_until(
        lambda: pair.cache.get_many(keys) == wanted and all(pair.held(k) for k in keys),
        timeout=10,
        what="all held",
    )
    hits = pair.near.hits
    assert pair.cache.get_many([*keys, "absent"]) == wanted
    assert pair.near.hits == hits + len(keys)
    pair.writer.set_many({"m3": "new", "m17": "newer"})
    wait_until(
        lambda: pair.cache.get_many(keys) == {**wanted, "m3": "new", "m17": "newer"},
        timeout=BOUND,
        what="the invalidations",
    )


@pytest.mark.parametrize("kind", KINDS)
def test_async_reads_share_the_near_cache_and_its_invalidations(pair: Pair) -> None:
    pair.cached("a", "one")

    async def reads() -> None:
        hits = pair.near.hits
        assert await pair.cache.aget("a") == "one"
        assert await pair.cache.aget_many(["a"]) == {"a": "one"}
        assert pair.near.hits == hits + 2
        await asyncio.to_thread(pair.writer.set, "a", "two")
        deadline = time.monotonic() + BOUND
        while await pair.cache.aget("a") != "two":
            assert time.monotonic() < deadline, "the invalidation never came"
            await asyncio.sleep(0.001)
        # An asyncio connection's reads are tracked too: fresh keys read on this loop.
        await pair.cache.aset("b", "x")
        await asyncio.to_thread(pair.tracker_of, "b")
        for _ in range(50):
            if await pair.cache.aget("b") == "x" and pair.held("b"):
                break
            await asyncio.sleep(0.01)
        assert pair.held("b")
        await asyncio.to_thread(pair.writer.set, "b", "y")
        deadline = time.monotonic() + BOUND
        while await pair.cache.aget("b") != "y":
            assert time.monotonic() < deadline, "the invalidation never came"
            await asyncio.sleep(0.001)

    asyncio.run(reads())


@pytest.mark.parametrize("kind", ["hashpool"])
def test_a_reply_is_not_kept_when_an_invalidation_came_while_it_was_in_flight(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race of a tracked read: the server answered with the old value, then a write
    # replaced it, and its invalidation arrives before the reply is stored. A real server
    # cannot be made to interleave that on cue, so the store is held back until the
    # invalidation was handled.
    pair.writer.set("raced", "old")
    tracker = pair.tracker_of("raced")
    store = NearCache.store

    def late_store(self: NearCache, key: bytes, raw: Any, *args: Any) -> None:
        seen = self.invalidations
        pair.writer.set("raced", "new")
        wait_until(lambda: self.invalidations > seen, timeout=10, what="the invalidation")
        store(self, key, raw, *args)

    pair.near.admits(pair.cache.make_key("raced"))  # missed once: the next miss is kept
    monkeypatch.setattr(NearCache, "store", late_store)
    assert pair.cache.get("raced") == "old"  # the reply of the read in flight
    monkeypatch.setattr(NearCache, "store", store)
    assert not pair.held("raced")
    assert pair.near.refused >= 1
    assert pair.cache.get("raced") == "new"
    assert tracker.ready


def _write_counts(url: str, seconds: float, acks: Any, start: Any) -> None:
    # In another process: bump k0..k9 in turn, logging when each write was acknowledged
    # (CLOCK_MONOTONIC, one clock for every process on the machine).
    from shardcache import Cache, HashPool

    cache = Cache(HashPool([url]))
    start.wait(30)
    log, seq, done = [], 0, time.monotonic() + seconds
    while time.monotonic() < done:
        seq += 1
        cache.set(f"k{seq % 10}", seq)
        log.append((f"k{seq % 10}", seq, time.monotonic()))
        time.sleep(0.001)
    acks.put(log)
    cache.close()


def test_readers_in_threads_never_see_a_value_replaced_longer_ago_than_the_bound(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    # A writer in another process, 8 reader threads here: a read may return an older value
    # only while the newer one's invalidation is on its way (BOUND; `bench near` measures
    # the delay: ~0.4 ms median).
    url = clean_redis_pool_servers.urls[0]
    made = Pair("hashpool", [url], {})
    try:
        for i in range(10):
            made.cached(f"k{i}", 0)
        context = multiprocessing.get_context("spawn")
        acks, start = context.Queue(), context.Event()
        writer = context.Process(target=_write_counts, args=(url, 2.0, acks, start))
        writer.start()
        stop = threading.Event()
        reads: list[list[tuple[str, int, float]]] = [[] for _ in range(8)]

        def read(mine: list[tuple[str, int, float]]) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                key = f"k{n % 10}"
                began = time.monotonic()
                mine.append((key, made.cache.get(key), began))

        threads = [threading.Thread(target=read, args=(mine,)) for mine in reads]
        for thread in threads:
            thread.start()
        start.set()
        log = acks.get(timeout=60)
        writer.join(30)
        stop.set()
        for thread in threads:
            thread.join(30)
        acked: dict[str, list[tuple[float, int]]] = {}
        for key, seq, when in log:
            acked.setdefault(key, []).append((when, seq))
        stale = 0
        for mine in reads:
            for key, value, began in mine:
                # The newest write of the key acknowledged BOUND before this read began.
                settled = [seq for when, seq in acked.get(key, []) if when < began - BOUND]
                stale += bool(settled) and value < max(settled)
        assert len(log) > 100
        assert sum(map(len, reads)) > 10_000
        assert stale == 0
        assert made.near.hits > 10_000  # they were near-cache reads, not round trips
    finally:
        made.close()


# --- what empties it --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_flushall_empties_the_servers_entries(pair: Pair) -> None:
    pair.cached("f", 1)
    leaf = pair.leaf_of("f")
    leaf.execute(b"FLUSHALL")
    wait_until(lambda: not pair.held("f"), timeout=BOUND, what="the null invalidation")
    assert pair.cache.get("f") is None


@pytest.mark.parametrize("kind", KINDS)
def test_killing_the_listener_empties_its_entries_and_it_comes_back(pair: Pair) -> None:
    pair.cached("k", "before")
    tracker = pair.tracker_of("k")
    epoch, listener = tracker.epoch, tracker.id
    pair.leaf_of("k").execute(b"CLIENT", b"KILL", b"ID", listener)
    wait_until(lambda: tracker.epoch > epoch, timeout=BOUND, what="the loss noticed")
    assert not pair.held("k")
    wait_until(lambda: tracker.ready, timeout=10, what="a new listener")
    assert tracker.id != listener
    # Connections that redirected to the old listener are redirected to the new one.
    pair.cached("k", "after")
    pair.writer.set("k", "later")
    pair.sees("k", "later", "an invalidation through the new listener")


def test_a_restarted_server_empties_its_entries(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    made = Pair("hashpool", clean_redis_pool_servers.urls, {})
    try:
        made.cached("r", "before")
        tracker = made.tracker_of("r")
        epoch = tracker.epoch
        server = _server_of(clean_redis_pool_servers, tracker)
        server.kill()  # a crash: nothing it held was invalidated
        wait_until(lambda: tracker.epoch > epoch, timeout=10, what="the loss noticed")
        assert not made.held("r")
        server.restart()
        made.cached("r", "after")
        made.writer.set("r", "later")
        made.sees("r", "later", "invalidations after the restart")
    finally:
        made.close()


def test_a_listener_that_misses_its_heartbeat_drops_its_entries(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    # A paused server answers nothing, invalidations included: after three heartbeats
    # without an answer its entries go, though the connection never dropped.
    made = Pair("hashpool", clean_redis_pool_servers.urls, {})
    try:
        made.cached("beat", "before")
        tracker = made.tracker_of("beat")
        epoch = tracker.epoch
        server = _server_of(clean_redis_pool_servers, tracker)
        server.pause()
        try:
            wait_until(lambda: tracker.epoch > epoch, timeout=15, what="the missed heartbeat")
            assert not made.held("beat")
        finally:
            server.resume()
        wait_until(lambda: tracker.ready, timeout=15, what="a new listener")
        made.cached("beat", "after")
        made.writer.set("beat", "later")
        made.sees("beat", "later", "invalidations after the pause")
    finally:
        made.close()


def test_a_slot_moving_to_another_master_drops_its_entries(
    clean_redis_cluster: RedisCluster,
) -> None:
    made = Pair("cluster", clean_redis_cluster.describe()["startup_nodes"][:1], {})
    try:
        made.cached("slotted", "before")
        slot = clean_redis_cluster.slot_of(made.cache.make_key("slotted"))
        source = clean_redis_cluster.owner_of(slot)
        target = next(m for m in clean_redis_cluster.masters if m is not source)
        clean_redis_cluster.migrate_slot(slot, target)
        made.writer.set("slotted", "moved")  # written on the new owner
        made.sees("slotted", "moved", "the slot's entries dropped")
        # Then held again, and invalidated by the new owner's listener.
        made.cached("slotted", "there")
        made.writer.set("slotted", "later")
        made.sees("slotted", "later", "an invalidation from the new owner")
    finally:
        made.close()


def test_a_sentinel_failover_drops_the_old_masters_entries(
    clean_redis_sentinel: RedisSentinel,
) -> None:
    described = clean_redis_sentinel.describe()
    made = Pair("sentinel", described["sentinels"], {"MASTERS": described["names"]})
    try:
        made.cached("failing", "before")
        old = made.leaf_of("failing")
        name = next(
            n
            for n in described["names"]
            if made.cache.topology.shard_for(made.cache.make_key("failing")).id == n
        )  # type: ignore[attr-defined]
        clean_redis_sentinel.failover(name)
        made.writer.set("failing", "after")
        made.sees("failing", "after", "the failover")
        assert made.leaf_of("failing") is not old
        assert old.tracker is None  # the old master's listener is gone with it
        made.cached("failing", "held")
        made.writer.set("failing", "later")
        made.sees("failing", "later", "an invalidation from the new master")
    finally:
        made.close()


def test_a_server_that_refuses_tracking_is_read_as_usual_and_nothing_is_kept(
    clean_redis_pool_servers: StandaloneRedis, caplog: pytest.LogCaptureFixture
) -> None:
    server = clean_redis_pool_servers.servers[0]
    admin = server.client()
    admin.execute_command(
        "ACL", "SETUSER", "untracked", "on", ">pw", "~*", "&*", "+@all", "-client|tracking"
    )
    made = Pair("hashpool", [f"redis://untracked:pw@127.0.0.1:{server.port}/0"], {})
    try:
        made.writer.set("k", 1)
        leaf = made.leaf_of("k")
        tracker = leaf.track()
        assert tracker is not None
        wait_until(
            lambda: made.cache.get("k") == 1 and tracker.refusal is not None,
            timeout=10,
            what="the refusal",
        )
        for _ in range(20):
            assert made.cache.get("k") == 1
            assert made.cache.get_many(["k"]) == {"k": 1}
        assert not made.held("k")
        assert leaf.track() is None  # not asked again: no thread started per read
        made.writer.set("k", 2)
        assert made.cache.get("k") == 2
        assert not [t for t in threading.enumerate() if t.name.startswith("shardcache-near")]
        assert sum("refused CLIENT TRACKING" in r.getMessage() for r in caplog.records) == 1
    finally:
        made.close()
        admin.execute_command("ACL", "DELUSER", "untracked")
        admin.close()


# --- bounds, lifecycle --------------------------------------------------------------------------


def test_the_bounds_hold_under_many_distinct_keys(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    made = Pair(
        "hashpool",
        clean_redis_pool_servers.urls,
        {},
        MAX_ENTRIES=200,
        MAX_BYTES=64_000,
        ADMIT_FIRST=True,
    )
    try:
        made.writer.set_many({f"b{i}": "x" * 500 for i in range(1000)})
        for leaf in made.cache.topology.shards():
            assert leaf.track().wait_ready(10)  # type: ignore[attr-defined]
        for i in range(1000):
            assert made.cache.get(f"b{i}") == "x" * 500
            stats = made.near.stats()
            assert stats.entries <= 200
            assert stats.bytes <= 64_000
        assert made.near.evictions > 0
        assert made.near.stats().entries > 50  # the bound by bytes, not by an emptied cache
    finally:
        made.close()


@pytest.mark.parametrize("kind", ["hashpool"])
def test_a_key_is_kept_from_its_second_miss_on(pair: Pair) -> None:
    # A doorkeeper (TinyLFU's): a key read once, the bulk of a miss-heavy load, costs no
    # TTL lookup and evicts nothing hotter.
    pair.writer.set_many({"once": 1, "twice": 2})
    pair.tracker_of("once")
    assert pair.cache.get("once") == 1
    assert not pair.held("once")
    assert pair.cache.get_many(["twice"]) == {"twice": 2}
    assert not pair.held("twice")
    assert pair.cache.get_many(["twice"]) == {"twice": 2}
    assert pair.held("twice")


def test_only_keys_under_the_prefixes_are_kept(clean_redis_pool_servers: StandaloneRedis) -> None:
    made = Pair("hashpool", clean_redis_pool_servers.urls, {}, PREFIXES=["hot:"])
    try:
        made.cached("hot:1", 1)
        made.writer.set("cold:1", 1)
        for _ in range(3):
            assert made.cache.get("cold:1") == 1
            assert made.cache.get_many(["cold:1", "hot:1"]) == {"cold:1": 1, "hot:1": 1}
        assert not made.held("cold:1")
    finally:
        made.close()


def test_closing_stops_every_listener(clean_redis_pool_servers: StandaloneRedis) -> None:
    before = {t.name for t in threading.enumerate()}
    made = Pair("hashpool", clean_redis_pool_servers.urls, {})
    for i in range(10):
        made.cached(f"c{i}", i)
    trackers = [leaf.tracker for leaf in made.cache.topology.shards()]  # type: ignore[attr-defined]
    assert all(t is not None and t.alive for t in trackers)
    made.close()
    assert not any(t.alive for t in trackers if t is not None)
    assert {t.name for t in threading.enumerate()} <= before
    assert made.near.stats().entries == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_empty_with_listeners_of_its_own(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    made = Pair("hashpool", clean_redis_pool_servers.urls, {})
    try:
        made.cached("forked", "parent")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            code = 1
            try:
                empty = made.near.stats().entries == 0
                first = made.cache.get("forked")
                made.cached("forked", "in the child")
                made.writer.set("forked", "child")
                made.sees("forked", "child", "the child's own invalidation")
                code = 0 if empty and first == "parent" else 2
            except BaseException:
                traceback.print_exc()
            finally:
                os.write(write, bytes([code]))
                os._exit(0)
        os.close(write)
        status = os.read(read, 1)
        os.waitpid(pid, 0)
        assert status == b"\x00"
        assert made.cache.get("forked") in ("child",)  # the parent's listener saw it too
    finally:
        made.close()


# --- configuration --------------------------------------------------------------------------


def test_memcache_refuses_a_near_cache_with_the_reason(
    clean_memcached_servers: Any,
) -> None:
    with pytest.raises(ConfigurationError, match="replaced"):
        Registry().cache("memcache", clean_memcached_servers.addresses, {"NEAR_CACHE": True})
    entry = {
        "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
        "LOCATION": clean_memcached_servers.addresses,
        "OPTIONS": {"NEAR_CACHE": True},
    }
    with override_settings(CACHES={"default": entry}), pytest.raises(ImproperlyConfigured):
        caches["default"].get("x")


def test_bad_near_cache_settings_fail_loudly(clean_redis_pool_servers: StandaloneRedis) -> None:
    for bad in ({"MAX_ENTRIES": 0}, {"SIZE": 3}, {"MAX_BYTES": "big"}, "yes"):
        with pytest.raises(ConfigurationError, match="NEAR_CACHE"):
            Registry().cache("hashpool", clean_redis_pool_servers.urls, {"NEAR_CACHE": bad})


def test_django_option_and_its_prefixes(clean_redis_pool_servers: StandaloneRedis) -> None:
    entry = {
        "BACKEND": "shardcache_django.cache.ShardedRedisCache",
        "LOCATION": clean_redis_pool_servers.urls,
        "KEY_PREFIX": "site",
        "OPTIONS": {"NEAR_CACHE": {"MAX_ENTRIES": 1000, "PREFIXES": ["product:"]}},
    }
    with override_settings(CACHES={"default": entry}):
        backend = caches["default"]
        core: Cache = backend.core  # type: ignore[attr-defined]
        assert core.near is not None
        for leaf in core.topology.shards():
            assert leaf.track().wait_ready(10)  # type: ignore[attr-defined]
        backend.set("product:1", "p")
        backend.set("user:1", "u")
        wait_until(
            lambda: (
                backend.get("product:1") == "p"
                and backend.make_key("product:1").encode() in core.near._entries
            ),  # type: ignore[union-attr]
            timeout=10,
            what="product:1 held",
        )
        assert backend.get("user:1") == "u"
        assert backend.make_key("user:1").encode() not in core.near._entries
        backend.clear()
        assert backend.get("product:1") is None


def test_flask_option(clean_redis_pool_servers: StandaloneRedis) -> None:
    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="shardcache_flask.ShardedRedisCache",
        CACHE_ARGS=clean_redis_pool_servers.urls,
        CACHE_SHARDCACHE_NEAR_CACHE={"MAX_ENTRIES": 10},
    )
    cache = flask_caching.Cache(app)
    with app.app_context():
        core: Cache = cache.cache.core
        assert core.near is not None
        assert core.near.max_entries == 10


@pytest.mark.parametrize("kind", ["hashpool"])
def test_near_cache_figures_are_exported_for_prometheus(pair: Pair) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from shardcache.metrics import prometheus_text, register_prometheus

    pair.cached("p", 1)
    for _ in range(10):
        pair.cache.get("p")
    pair.writer.set("p", 2)
    pair.sees("p", 2, "the invalidation")
    stats = pair.near.stats()
    text = prometheus_text(pair.cache.metrics(), {"alias": "x"}, near=pair.near)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hits = families["shardcache_near_hits"].samples[0]
    assert hits.value >= 10
    assert hits.labels == {"alias": "x"}
    assert families["shardcache_near_invalidations"].samples[0].value >= 1
    assert families["shardcache_near_entries"].type == "gauge"
    registry = CollectorRegistry()
    register_prometheus(pair.cache.counters, registry, near=pair.near, alias="x")  # type: ignore[arg-type]
    parsed = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert parsed["shardcache_near_stored"].samples[0].value >= stats.stored


@pytest.mark.parametrize("kind", ["hashpool"])
def test_the_server_tracks_only_the_keys_the_near_cache_keeps(pair: Pair) -> None:
    # OPTIN: reads that are not kept (first sight, other caches on the topology) leave
    # nothing in the server's tracking table.
    leaf = pair.leaf_of("x")
    pair.tracker_of("x")

    def tracked() -> int:
        info = leaf.execute(b"INFO", b"stats").decode()
        return int(
            next(line for line in info.splitlines() if "tracking_total_keys" in line).split(":")[1]
        )

    leaf.execute(b"CONFIG", b"RESETSTAT")
    keys = [f"one{i}" for i in range(200) if pair.leaf_of(f"one{i}") is leaf]
    pair.writer.set_many(dict.fromkeys(keys, 1))
    before = tracked()
    for key in keys:
        assert pair.cache.get(key) == 1
    plain = Cache(pair.cache.topology)  # another cache on the same connections
    assert plain.get_many(keys) == dict.fromkeys(keys, 1)
    assert tracked() == before
    pair.cached("x", 1)
    assert tracked() == before + 1
    # Each connection is redirected once, not on every command.
    stats = leaf.execute(b"INFO", b"commandstats").decode()
    lines = [line for line in stats.splitlines() if line.startswith("cmdstat_client|tracking:")]
    assert sum(int(line.split("calls=")[1].split(",")[0]) for line in lines) <= 2


def test_a_hiredis_that_cannot_tell_pushes_from_replies_turns_the_near_cache_off(
    clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # hiredis < 3.2 hands a RESP3 push back as a plain list: a "tracking-redir-broken"
    # would then be taken for a reply. Faked here: no such hiredis is installed.
    from shardcache import wire

    monkeypatch.setattr(wire, "_PUSH", None)
    monkeypatch.setattr(wire, "HiredisReader", object)
    made = Pair("hashpool", clean_redis_pool_servers.urls, {})
    try:
        made.writer.set("k", 1)
        for _ in range(3):
            assert made.cache.get("k") == 1
        assert made.leaf_of("k").track() is None
        assert not made.held("k")
    finally:
        made.close()
