"""Fail fast: the socket timeout a user sets is the one applied, and a server that proved
unreachable is skipped for ``retry_timeout`` seconds (one probe brings it back), sync and
async, without touching the other servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from django.test import override_settings

from shardcache import Cache, HashPool, MissingKeyError, ShardUnavailableError, fence
from shardcache.breaker import Breaker
from shardcache.connections import RedisShard
from shardcache.deferred import Deferred
from shardcache.dialects import REDIS
from shardcache.protocols import REDIS_CAPABILITIES
from shardcache.registry import Registry
from shardcache.testing import StandaloneRedis, wait_until
from shardcache.testing.servers import RedisServer


def _key_on(cache: Cache, shard: object) -> str:
    for i in range(10_000):
        key = f"k{i}"
        if cache.topology.shard_for(cache.make_key(key)) is shard:
            return key
    raise AssertionError("no key found on that shard")


def _server_of(servers: StandaloneRedis, shard: RedisShard) -> RedisServer:
    return next(s for s in servers.servers if f":{s.port}" in shard.id)


@pytest.fixture
def registry() -> Iterator[Registry]:
    registry = Registry()
    yield registry
    registry.close()


def test_the_breaker_fails_fast_then_lets_one_probe_through() -> None:
    breaker = Breaker("127.0.0.1:1", retry_timeout=0.2)
    breaker.check()  # closed: nothing happens
    breaker.failed()
    assert breaker.is_open
    assert breaker.trips == 1
    with pytest.raises(ShardUnavailableError, match="circuit breaker") as failed:
        breaker.check()
    assert failed.value.sent is False
    wait_until(lambda: not breaker.is_open or breaker._probing, timeout=5, what="the period")
    breaker.check()  # the probe goes through...
    with pytest.raises(ShardUnavailableError):
        breaker.check()  # ...and only the probe
    breaker.failed()  # the probe failed: another period
    assert breaker.is_open
    assert breaker.trips == 2
    wait_until(lambda: time.monotonic() >= breaker.down_until, timeout=5, what="the period")
    breaker.check()
    breaker.succeeded()
    assert not breaker.is_open
    breaker.check()
    disabled = Breaker("x", retry_timeout=0)
    disabled.failed()
    disabled.check()  # retry_timeout=0: never opens


def test_a_probe_that_never_reports_only_delays_the_next_one() -> None:
    # E.g. an asyncio call cancelled mid-probe (an ASGI request timing out): nothing tells
    # the breaker how the probe went, and the server must not stay marked down for good.
    breaker = Breaker("127.0.0.1:1", retry_timeout=0.1)
    breaker.failed()
    wait_until(lambda: not breaker.is_open, timeout=5, what="the period")
    breaker.check()  # the probe goes through, and is never heard of again
    with pytest.raises(ShardUnavailableError):
        breaker.check()
    wait_until(lambda: not breaker.is_open, timeout=5, what="another period")
    breaker.check()  # a new probe
    breaker.succeeded()
    assert not breaker.is_open


def test_a_paused_server_costs_one_socket_timeout_then_fails_fast_and_comes_back(
    clean_redis_pool_servers: StandaloneRedis,
    registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = {"SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 1, "IGNORE_ERRORS": True}
    cache = registry.cache("hashpool", clean_redis_pool_servers.urls, options)
    shards = cache.topology.shards()
    sick, healthy = shards[0], shards[1]
    assert isinstance(sick, RedisShard)
    sick_key, healthy_key = _key_on(cache, sick), _key_on(cache, healthy)
    cache.set(sick_key, "before")
    cache.set(healthy_key, "fine")
    server = _server_of(clean_redis_pool_servers, sick)
    server.pause()
    try:
        started = time.monotonic()
        assert cache.get(sick_key, "missed") == "missed"  # ignore_errors: a miss
        first = time.monotonic() - started
        # SOCKET_TIMEOUT=1 is the timeout applied (it used to be max(read, write=3s)).
        assert first < 2.5, f"the first call waited {first:.2f}s with SOCKET_TIMEOUT=1"
        assert sick.breaker.is_open
        for _ in range(50):  # marked down: no call waits for the socket any more
            assert cache.get(sick_key, "missed") == "missed"
            assert cache.set(sick_key, "during") is False
        assert sick.breaker.trips == 1
        assert cache.get(healthy_key) == "fine"  # the other servers are not affected
        assert cache.get_many([sick_key, healthy_key]) == {healthy_key: "fine"}
        lines = [r for r in caplog.records if "ignore_errors=True" in r.getMessage()]
        assert len(lines) == 1  # one line per shard per period, not one per call
    finally:
        server.resume()
    wait_until(lambda: cache.get(sick_key) == "before", timeout=15, what="the probe")
    assert not sick.breaker.is_open


def test_a_server_that_never_closes_a_timed_out_connection_is_tried_again_after_the_limit(
    clean_redis_pool_servers: StandaloneRedis,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The fence (shardcache.fence) holds a server back until it has closed the connection
    # of a timed-out call; one that stays paused is tried again after LIMIT seconds.
    monkeypatch.setattr(fence, "LIMIT", 1.0)
    options = {"SOCKET_TIMEOUT": 0.5, "RETRY_TIMEOUT": 0.1}
    cache = registry.cache("hashpool", clean_redis_pool_servers.urls, options)
    sick = cache.topology.shards()[0]
    assert isinstance(sick, RedisShard)
    key = _key_on(cache, sick)
    cache.set(key, "before")  # a warm connection: the request is sent, the reply is the wait
    server = _server_of(clean_redis_pool_servers, sick)
    server.pause()
    try:
        with pytest.raises(ShardUnavailableError, match=r"(?i)timeout"):
            cache.set(key, "timed out")
        assert sick.breaker.fence
        wait_until(lambda: time.monotonic() >= sick.breaker.down_until, timeout=5, what="retry")
        with pytest.raises(ShardUnavailableError, match="timed-out calls") as fenced:
            cache.set(key, "held back")
        assert fenced.value.sent is False
        # Past the limit the probe is sent again (and times out: the server is still paused).
        wait_until(sick.breaker.fence.settled, timeout=5, what="the limit")
        with pytest.raises(ShardUnavailableError, match=r"(?i)timeout"):
            cache.get(key)
        assert any("has not answered a timed-out call" in r.getMessage() for r in caplog.records)
    finally:
        server.resume()
    wait_until(
        lambda: cache.get(key) == "timed out",
        timeout=15,
        what="the server back",
        errors=(ShardUnavailableError,),
    )


def test_without_ignore_errors_a_marked_down_server_raises_at_once_and_says_so(
    clean_redis_pool_servers: StandaloneRedis, registry: Registry
) -> None:
    cache = registry.cache(
        "hashpool", clean_redis_pool_servers.urls, {"SOCKET_TIMEOUT": 0.5, "RETRY_TIMEOUT": 30}
    )
    sick = cache.topology.shards()[0]
    key = _key_on(cache, sick)
    server = _server_of(clean_redis_pool_servers, sick)  # type: ignore[arg-type]
    server.pause()
    try:
        with pytest.raises(ShardUnavailableError, match=r"(?i)timeout"):
            cache.get(key)
        with pytest.raises(ShardUnavailableError, match="circuit breaker") as failed:
            cache.set(key, 1)
        assert failed.value.sent is False  # a write refused by the breaker was never sent

        async def calls() -> None:
            with pytest.raises(ShardUnavailableError, match="circuit breaker"):
                await cache.aget(key)  # the asyncio path shares the server's breaker
            with pytest.raises(ShardUnavailableError, match="circuit breaker"):
                await cache.aget_many([key, "other"])

        asyncio.run(calls())
    finally:
        server.resume()


def test_a_restarted_server_is_not_marked_down_by_its_stale_connections(
    clean_redis_pool_servers: StandaloneRedis, registry: Registry
) -> None:
    cache = registry.cache("hashpool", clean_redis_pool_servers.urls, {"RETRY_TIMEOUT": 30})
    shard = cache.topology.shards()[0]
    key = _key_on(cache, shard)
    cache.set(key, 1)  # leaves a pooled connection
    server = _server_of(clean_redis_pool_servers, shard)  # type: ignore[arg-type]
    server.stop()
    server.restart()
    # The pooled connection is stale: the write fails (it may have been sent), but a stale
    # connection is no proof the server is down, so the next call goes through.
    with pytest.raises(ShardUnavailableError):
        cache.incr(key, 1, create=True)
    assert not shard.breaker.is_open  # type: ignore[attr-defined]
    assert cache.set(key, 2) is True


def test_a_call_on_a_paused_server_bounds_async_calls_too(
    clean_redis_pool_servers: StandaloneRedis, registry: Registry
) -> None:
    cache = registry.cache(
        "hashpool", clean_redis_pool_servers.urls, {"SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 30}
    )
    sick, healthy = cache.topology.shards()[:2]
    key, warm = _key_on(cache, sick), _key_on(cache, healthy)
    server = _server_of(clean_redis_pool_servers, sick)  # type: ignore[arg-type]

    async def first_call() -> float:
        await cache.aget(warm)  # this loop's pool exists before the pause
        started = time.monotonic()
        with pytest.raises(ShardUnavailableError):
            await cache.aget(key)
        return time.monotonic() - started

    server.pause()
    try:
        waited = asyncio.run(first_call())
        assert waited < 2.5, f"waited {waited:.2f}s with SOCKET_TIMEOUT=1"
        assert sick.breaker.is_open  # type: ignore[attr-defined]
    finally:
        server.resume()


# --- servers down at first use: ignore_errors means misses on every topology and adapter ---

DOWN = {
    "hashpool": ("shardcache_django.cache.ShardedRedisCache", ["redis://127.0.0.1:1"], {}),
    "cluster": ("shardcache_django.cache.RedisClusterCache", ["127.0.0.1:1"], {}),
    "sentinel": (
        "shardcache_django.cache.RedisSentinelCache",
        ["127.0.0.1:1"],
        {"MASTERS": ["bucket0"]},
    ),
    "memcache": ("shardcache_django.cache.ShardedMemcacheCache", ["127.0.0.1:1"], {}),
}


@pytest.mark.parametrize("kind", sorted(DOWN))
def test_servers_down_at_first_use_give_misses_with_ignore_errors(
    kind: str, registry: Registry
) -> None:
    _, location, options = DOWN[kind]
    lenient = {**options, "IGNORE_ERRORS": True, "CONNECT_TIMEOUT": 0.5}
    cache = registry.cache(kind, location, lenient, prefix="t:")
    assert cache.get("k", "missed") == "missed"
    assert cache.set("k", 1) is False
    assert cache.add("k", 1) is False
    assert cache.delete("k") is False
    assert cache.has("k") is False
    assert cache.get_many(["a", "b"]) == {}
    assert sorted(cache.set_many({"a": 1, "b": 2})) == ["a", "b"]
    assert cache.delete_many(["a", "b"]) == 0
    assert cache.clear(flush=True) == 0
    with pytest.raises(MissingKeyError):
        cache.incr("n")  # no counter to add to: as a missing key
    assert asyncio.run(cache.aget("k", "missed")) == "missed"
    assert asyncio.run(cache.aget_many(["a"])) == {}
    strict = registry.cache(kind, location, {**options, "CONNECT_TIMEOUT": 0.5}, prefix="t:")
    with pytest.raises(ShardUnavailableError):
        strict.get("k")  # without ignore_errors the same outage is an error


@pytest.mark.parametrize("kind", sorted(DOWN))
def test_django_backends_start_and_miss_while_their_servers_are_down(kind: str) -> None:
    backend, location, options = DOWN[kind]
    entry = {
        "BACKEND": backend,
        "LOCATION": location,
        "OPTIONS": {**options, "IGNORE_ERRORS": True, "CONNECT_TIMEOUT": 0.5},
    }
    with override_settings(CACHES={"default": entry}):
        from django.core.cache import caches

        cache = caches["default"]
        assert cache.get("k", "missed") == "missed"
        assert cache.set("k", 1) is None  # Django's set returns None; nothing raised
        assert cache.add("k", 1) is False
        assert cache.get_many(["a", "b"]) == {}
        assert cache.delete("k") is False


FLASK_DOWN = {
    "hashpool": {
        "CACHE_TYPE": "shardcache_flask.ShardedRedisCache",
        "CACHE_SHARDCACHE_SERVERS": ["redis://127.0.0.1:1/0"],
    },
    "cluster": {
        "CACHE_TYPE": "shardcache_flask.RedisClusterCache",
        "CACHE_REDIS_CLUSTER": "127.0.0.1:1",
    },
    "sentinel": {
        "CACHE_TYPE": "shardcache_flask.RedisSentinelCache",
        "CACHE_REDIS_SENTINELS": [("127.0.0.1", 1)],
        "CACHE_SHARDCACHE_MASTERS": ["bucket0"],
    },
    "memcache": {
        "CACHE_TYPE": "shardcache_flask.ShardedMemcacheCache",
        "CACHE_MEMCACHED_SERVERS": ["127.0.0.1:1"],
    },
}


@pytest.mark.parametrize("kind", sorted(FLASK_DOWN))
def test_flask_backends_miss_while_their_servers_are_down(kind: str) -> None:
    from flask import Flask
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    app.config.update(FLASK_DOWN[kind], CACHE_SHARDCACHE_IGNORE_ERRORS=True)
    cache = FlaskCache(app)
    with app.app_context():
        assert cache.get("k") is None
        assert cache.set("k", 1) is False
        assert cache.add("k", 1) is False
        assert cache.get_many("a", "b") == [None, None]
        assert cache.has("k") is False
        assert cache.delete("k") is False


def test_a_deferred_topology_is_built_once_its_servers_answer(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    attempts: list[int] = []

    def build() -> HashPool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ShardUnavailableError("not yet", sent=False)
        return HashPool(clean_redis_pool_servers.urls)

    deferred = Deferred(
        build,
        ShardUnavailableError("down at start", sent=False),
        capabilities=REDIS_CAPABILITIES,
        dialect=REDIS,
        retry_timeout=0.05,
        name="test pool",
    )
    cache = Cache(deferred, prefix="t:", ignore_errors=True)
    assert cache.set("k", 1) is False  # too early: no build attempt, a miss
    wait_until(lambda: cache.set("k", 1), timeout=10, what="the topology to be built")
    assert len(attempts) == 3  # one try per period, not one per call
    assert cache.get("k") == 1
    cache.close()
    assert deferred.closed
