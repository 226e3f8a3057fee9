"""Stampede protection on real servers, every Redis topology (and memcache), sync and async:
one caller computes a missing value while the others wait (bounded) or are given the
previous one, and XFetch recomputes a hot key before it expires."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import override_settings

from shardcache import Cache
from shardcache.registry import Registry
from shardcache.testing import MemcachedServers, RedisCluster, RedisSentinel, StandaloneRedis

KINDS = ["hashpool", "cluster", "sentinel", "memcache"]


@pytest.fixture
def cache(request: pytest.FixtureRequest, kind: str) -> Iterator[Cache]:
    own = Registry()
    if kind == "hashpool":
        pool: StandaloneRedis = request.getfixturevalue("clean_redis_pool_servers")
        location, options = pool.urls, {}
    elif kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("clean_redis_cluster")
        location, options = cluster.describe()["startup_nodes"][:1], {}
    elif kind == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("clean_redis_sentinel")
        described = sentinel.describe()
        location, options = described["sentinels"], {"MASTERS": described["names"]}
    else:
        memcache: MemcachedServers = request.getfixturevalue("clean_memcached_servers")
        location, options = memcache.addresses, {}
    yield own.cache(kind, location, options, prefix="stampede:")
    own.close()


def _in_threads(target: Any, count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


class Counted:
    """A slow compute function that counts its calls and how many ran at once."""

    def __init__(self, seconds: float, value: Any = "computed") -> None:
        self.seconds = seconds
        self.value = value
        self.calls = 0
        self.running = 0
        self.most = 0
        self.spans: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        began = time.time()
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
            self.spans.append((began, time.time()))
        return self.value

    async def acall(self) -> Any:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        began = time.time()
        await asyncio.sleep(self.seconds)
        with self._lock:
            self.running -= 1
            self.spans.append((began, time.time()))
        return self.value


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", ["sync", "async"])
def test_64_callers_of_an_expired_hot_key_compute_it_once(cache: Cache, api: str) -> None:
    compute = Counted(0.3)
    waited: list[float] = []
    results: list[Any] = []

    def one() -> None:
        began = time.monotonic()
        results.append(cache.get_or_compute("hot", compute, ttl=30, wait=5))
        waited.append(time.monotonic() - began)

    if api == "sync":
        _in_threads(one, 64)
    else:

        async def many() -> None:
            async def one_async() -> None:
                began = time.monotonic()
                results.append(await cache.aget_or_compute("hot", compute.acall, ttl=30, wait=5))
                waited.append(time.monotonic() - began)

            await asyncio.gather(*(one_async() for _ in range(64)))

        asyncio.run(many())
    assert compute.calls == 1  # exactly once
    assert results == ["computed"] * 64
    assert max(waited) < 5 + 1  # nobody waits past the bound
    assert cache.get("hot") == "computed"  # a plain get sees the value, not the envelope


@pytest.mark.parametrize("kind", ["hashpool", "memcache"])
def test_the_previous_value_is_served_while_one_caller_recomputes(cache: Cache) -> None:
    cache.get_or_compute("k", lambda: "old", ttl=1, stale=30, beta=0)
    time.sleep(1.1)  # fresh for 1 s; kept 30 s more
    slow = Counted(1.0, "new")
    recomputing = threading.Thread(
        target=lambda: cache.get_or_compute("k", slow, ttl=1, stale=30, beta=0)
    )
    recomputing.start()
    while slow.calls == 0:
        time.sleep(0.005)
    began = time.monotonic()
    assert cache.get_or_compute("k", Counted(1.0, "other"), ttl=1, stale=30, beta=0) == "old"
    assert time.monotonic() - began < 0.5  # at once, not after the recompute
    recomputing.join(10)
    assert cache.get_or_compute("k", Counted(1.0, "other"), ttl=1, stale=30, beta=0) == "new"


@pytest.mark.parametrize("kind", ["hashpool", "cluster", "sentinel"])
@pytest.mark.parametrize("api", ["sync", "async"])
def test_xfetch_recomputes_a_hot_key_before_it_expires(cache: Cache, api: str) -> None:
    compute = Counted(0.05)
    ttl, run_for = 0.6, 3.0
    missing_reads = 0

    def reader() -> None:
        nonlocal missing_reads
        # Stored for sure once get_or_compute has returned. (Not once the first compute has
        # ended: its store comes after, and a get sent in between rightly finds nothing.)
        stored = False
        stop = time.monotonic() + run_for
        while time.monotonic() < stop:
            if stored and cache.get("xf") is None:  # gone after the first store
                missing_reads += 1
            cache.get_or_compute("xf", compute, ttl=ttl, stale=0.001, beta=1.0)
            stored = True

    async def areader() -> None:
        stop = time.monotonic() + run_for
        while time.monotonic() < stop:
            await cache.aget_or_compute("xf", compute.acall, ttl=ttl, stale=0.001, beta=1.0)

    if api == "sync":
        _in_threads(reader, 8)
    else:

        async def many() -> None:
            await asyncio.gather(*(areader() for _ in range(8)))

        asyncio.run(many())
    spans = sorted(compute.spans)
    assert len(spans) >= run_for / ttl - 1  # it was recomputed all along
    # Each recompute began before the previous value expired (its end + ttl): early.
    late = [i for i in range(1, len(spans)) if spans[i][0] >= spans[i - 1][1] + ttl]
    assert late == []
    assert compute.most <= 2  # a few concurrent computes at most (here: the lock's one)
    assert missing_reads == 0


@pytest.mark.parametrize("kind", ["hashpool"])
def test_a_failing_compute_raises_and_frees_the_lock(cache: Cache) -> None:
    def broken() -> Any:
        raise RuntimeError("the database is down")

    with pytest.raises(RuntimeError, match="database is down"):
        cache.get_or_compute("f", broken, ttl=30, wait=0.2)
    assert cache.get_or_compute("f", lambda: "fine", ttl=30, wait=0.2) == "fine"  # no stale lock


def test_django_get_or_set_with_the_stampede_option(
    clean_redis_cluster: RedisCluster,
) -> None:
    entry = {
        "BACKEND": "shardcache_django.cache.RedisClusterCache",
        "LOCATION": clean_redis_cluster.describe()["startup_nodes"][:1],
        "OPTIONS": {"STAMPEDE": {"WAIT": 5, "BETA": 1}},
    }
    with override_settings(CACHES={"default": entry}):
        backend = caches["default"]
        compute = Counted(0.3, {"report": 1})
        got: list[Any] = []
        _in_threads(lambda: got.append(backend.get_or_set("r", compute, 60)), 32)
        assert compute.calls == 1
        assert got == [{"report": 1}] * 32
        assert backend.get("r") == {"report": 1}
        assert backend.get_or_set("plain", "value", 60) == "value"  # not callable: Django's
        assert asyncio.run(backend.aget_or_compute("a", lambda: 7, 60)) == 7


def test_flask_computed_view_computes_once_for_concurrent_requests(
    clean_redis_cluster: RedisCluster,
) -> None:
    import flask
    import flask_caching

    from shardcache_flask import computed

    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE="shardcache_flask.RedisClusterCache",
        CACHE_REDIS_CLUSTER=",".join(clean_redis_cluster.describe()["startup_nodes"]),
        CACHE_SHARDCACHE_STAMPEDE={"WAIT": 5},
    )
    cache = flask_caching.Cache(app)
    build = Counted(0.3, "the report")

    @app.route("/report/<int:year>")
    @computed(cache, timeout=60)
    def report(year: int) -> str:
        return f"{build()} for {year}"

    bodies: list[bytes] = []
    _in_threads(lambda: bodies.append(app.test_client().get("/report/2026").data), 16)
    assert build.calls == 1
    assert bodies == [b"the report for 2026"] * 16
    assert app.test_client().get("/report/2025").data == b"the report for 2025"
    assert build.calls == 2  # another argument, another key
