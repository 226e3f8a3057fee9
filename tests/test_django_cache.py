"""The Django backends on real servers: one conformance class, four topologies, three key
settings (plain, KEY_PREFIX + VERSION, a custom KEY_FUNCTION); and the system checks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import CacheKeyWarning, InvalidCacheKey
from django.core.cache.backends.base import BaseCache, default_key_func
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from shardcache import MemcachedState, ShardState
from shardcache.testing import MemcachedServers, RedisCluster, RedisSentinel, StandaloneRedis
from shardcache_django.cache import (
    RedisClusterCache,
    RedisSentinelCache,
    ShardedMemcacheCache,
    ShardedRedisCache,
)
from shardcache_django.checks import check_caches


def reversed_key(key: str, key_prefix: str, version: int) -> str:
    return f"{key[::-1]}|{version}|{key_prefix}"


KEY_SETTINGS = {
    "plain": {},
    "prefix+version": {"KEY_PREFIX": "site1", "VERSION": 3},
    "key_function": {"KEY_FUNCTION": reversed_key},
}


class Unpicklable:
    def __getstate__(self) -> Any:
        raise pickle.PickleError()


class NoThreads(concurrent.futures.ThreadPoolExecutor):
    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an async cache call went to a thread")


class AsyncDriven:
    """A backend whose BaseCache methods run as their ``a*`` twins, on one event loop in its
    own thread (as Django's ``async_to_sync`` drives them), so that the one conformance
    class checks both APIs. With ``native``, any use of a worker thread fails."""

    DRIVEN = frozenset(
        {"get", "set", "add", "delete", "get_many", "set_many", "delete_many", "has_key"}
        | {"incr", "decr", "touch", "clear", "get_or_set", "incr_version", "decr_version"}
        | {"close"}
    )

    def __init__(self, backend: Any, *, native: bool) -> None:
        self.backend = backend
        self.loop = asyncio.new_event_loop()
        if native:
            self.loop.set_default_executor(NoThreads())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __getattr__(self, name: str) -> Any:
        if name not in self.DRIVEN:
            return getattr(self.backend, name)
        twin = getattr(self.backend, "a" + name)

        def driven(*args: Any, **kwargs: Any) -> Any:
            future = asyncio.run_coroutine_threadsafe(twin(*args, **kwargs), self.loop)
            return future.result(timeout=60)

        return driven

    def __contains__(self, key: Any) -> bool:
        return bool(self.has_key(key))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class DjangoCacheContract:
    """Django's cache contract; a subclass provides ``backend(params) -> BaseCache``. Each
    test runs on the sync API and again on the async one (``a*``)."""

    redis_extras = True  # ttl / expire / persist / lock / delete_pattern / iter_keys
    native_async = True  # the a* methods never use a worker thread

    def backend(self, params: dict[str, Any]) -> Any:
        raise NotImplementedError("a concrete test class builds its backend")

    @pytest.fixture(params=[(k, api) for api in ("sync", "async") for k in KEY_SETTINGS], ids=str)
    def cache(self, request: pytest.FixtureRequest) -> Iterator[Any]:
        settings, api = request.param
        backend = self.backend({"TIMEOUT": 300, **KEY_SETTINGS[settings]})
        backend.clear()
        if api == "sync":
            yield backend
            return
        driven = AsyncDriven(backend, native=self.native_async)
        yield driven
        driven.stop()

    def test_async_methods_are_the_backends_own(self) -> None:
        backend = self.backend({})
        for name in AsyncDriven.DRIVEN - {"get_or_set", "incr_version", "decr_version"}:
            method = getattr(type(backend), "a" + name)
            assert method is not getattr(BaseCache, "a" + name), name

    def test_get_set_add_delete(self, cache: Any) -> None:
        assert cache.get("missing") is None
        assert cache.get("missing", "default") == "default"
        cache.set("k", "v")
        assert cache.get("k") == "v"
        assert cache.add("k", "other") is False
        assert cache.add("new", "value") is True
        assert cache.delete("k") is True
        assert cache.delete("k") is False
        assert cache.has_key("new")
        assert "new" in cache

    def test_a_cached_none_is_a_hit(self, cache: Any) -> None:
        cache.set("none", None)
        assert cache.get("none", "default") is None
        assert cache.get_many(["none"]) == {"none": None}
        assert cache.get_or_set("none", "computed") is None
        assert cache.has_key("none")

    def test_get_many_takes_any_iterable(self, cache: Any) -> None:
        cache.set_many({"a": 1, "b": 2, "c": 3})
        assert cache.get_many(key for key in ["a", "c", "x"]) == {"a": 1, "c": 3}

    def test_set_many_returns_a_list_and_delete_many_empty_is_a_no_op(self, cache: Any) -> None:
        assert cache.set_many({"a": 1, "b": 2}) == []
        cache.delete_many([])
        cache.delete_many(["a"])
        assert cache.get_many(["a", "b"]) == {"b": 2}

    def test_incr_decr(self, cache: Any) -> None:
        cache.set("n", 1)
        assert cache.incr("n") == 2
        assert cache.incr("n", 10) == 12
        assert cache.decr("n", 2) == 10
        with pytest.raises(ValueError, match="not found"):
            cache.incr("missing")
        cache.set("text", "abc")
        with pytest.raises(TypeError):
            cache.incr("text")

    def test_concurrent_incr_from_threads(self, cache: Any) -> None:
        cache.set("n", 0)
        threads = [
            threading.Thread(target=lambda: [cache.incr("n") for _ in range(50)]) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.get("n") == 200

    def test_timeouts(self, cache: Any) -> None:
        cache.set("forever", 1, timeout=None)
        cache.set("zero", 1, timeout=0)
        cache.set("gone", 1)
        cache.set("gone", 2, timeout=-1)  # negative: deleted
        cache.set("float", 1, timeout=1.5)
        assert cache.get("forever") == 1
        assert cache.get("zero") is None
        assert cache.get("gone") is None
        assert cache.get("float") == 1
        assert cache.add("zero", 1, timeout=0) is True
        assert cache.get("zero") is None

    def test_touch(self, cache: Any) -> None:
        assert cache.touch("missing") is False
        cache.set("k", 1, timeout=60)
        assert cache.touch("k", None) is True
        if self.redis_extras:
            assert cache.ttl("k") is None  # no longer expires
        assert cache.get("k") == 1
        assert cache.touch("k", 0) is True
        assert cache.get("k") is None

    def test_set_and_add_fail_on_pickleerror(self, cache: Any) -> None:
        # Django's own test_set_fail_on_pickleerror / test_add_fail_on_pickleerror.
        with pytest.raises(pickle.PickleError):
            cache.set("unpicklable", Unpicklable())
        with pytest.raises(pickle.PickleError):
            cache.add("unpicklable", Unpicklable())
        assert cache.get("unpicklable") is None

    def test_unicode_binary_large_and_model_values(self, cache: Any) -> None:
        values = {
            "ünïcødé-κλειδί": "ünïcødé value ✓",
            "binary": b"\x00\x01\xfe\xff" * 100,
            "large": "x" * 500_000,
            "model": User(username="ada", email="ada@example.org"),
        }
        cache.set_many(values)
        got = cache.get_many(list(values))
        assert got["ünïcødé-κλειδί"] == values["ünïcødé-κλειδί"]
        assert got["binary"] == values["binary"]
        assert got["large"] == values["large"]
        assert got["model"].username == "ada"

    def test_get_or_set_with_a_callable(self, cache: Any) -> None:
        calls = []
        assert cache.get_or_set("k", lambda: calls.append(1) or "computed") == "computed"
        assert cache.get_or_set("k", lambda: calls.append(1) or "again") == "computed"
        assert calls == [1]

    def test_versions(self, cache: Any) -> None:
        cache.set("k", "v1", version=1)
        cache.set("k", "v2", version=2)
        assert (cache.get("k", version=1), cache.get("k", version=2)) == ("v1", "v2")
        cache.set("moving", None, version=1)
        assert cache.incr_version("moving", version=1) == 2
        assert cache.get("moving", "missing", version=2) is None  # a None value moves too
        assert cache.get("moving", "missing", version=1) == "missing"
        assert cache.decr_version("moving", version=2) == 1

    def test_clear_keeps_other_prefixes(self, cache: Any) -> None:
        other = self.backend({"KEY_PREFIX": "other-site"})
        other.set("k", "stays")
        cache.set("k", "goes")
        cache.clear()
        assert cache.get("k") is None
        if cache.key_prefix and self.redis_extras:
            assert other.get("k") == "stays"

    def test_redis_extras(self, cache: Any) -> None:
        if not self.redis_extras:
            pytest.skip("memcache has no TTL listing, key scans or locks")
        cache.set("t", 1, timeout=60)
        assert 59 <= cache.ttl("t") <= 60
        assert 59_000 <= cache.pttl("t") <= 60_000
        assert cache.persist("t") is True
        assert cache.ttl("t") is None
        assert cache.expire("t", 30) is True
        assert cache.ttl("missing") == 0
        cache.set_many({"user:1": 1, "user:2": 2, "other": 3})
        expected = ["user:1", "user:2"]
        if cache.key_func is not default_key_func:  # no way back from a custom key
            expected = sorted(cache.make_key(k) for k in expected)
        assert sorted(cache.keys("user:*")) == expected
        assert cache.delete_pattern("user:*") == 2
        assert cache.get("other") == 3
        with cache.lock("job", timeout=5):
            assert not cache.lock("job", blocking_timeout=0.1).acquire()


class TestShardedRedisDjango(DjangoCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_pool_servers: StandaloneRedis) -> None:
        self.location = clean_redis_pool_servers.urls

    def backend(self, params: dict[str, Any]) -> Any:
        return ShardedRedisCache(self.location, {**params, "OPTIONS": {"HASH": "ketama"}})


class TestRedisClusterDjango(DjangoCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_cluster: RedisCluster) -> None:
        self.location = ";".join(node.address for node in clean_redis_cluster.nodes[:2])

    def backend(self, params: dict[str, Any]) -> Any:
        return RedisClusterCache(self.location, params)


class TestRedisSentinelDjango(DjangoCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_sentinel: RedisSentinel) -> None:
        self.location = [f"{h}:{p}" for h, p in clean_redis_sentinel.sentinel_addresses]

    def backend(self, params: dict[str, Any]) -> Any:
        options = {"MASTERS": ["bucket0", "bucket1"], "COMPRESSOR": "zlib"}
        return RedisSentinelCache(self.location, {**params, "OPTIONS": options})


class TestShardedMemcacheDjango(DjangoCacheContract):
    redis_extras = False
    native_async = False  # pymemcache has no asyncio client: commands run in threads

    @pytest.fixture(autouse=True)
    def _servers(self, clean_memcached_servers: MemcachedServers) -> None:
        self.location = clean_memcached_servers.addresses

    def backend(self, params: dict[str, Any]) -> Any:
        return ShardedMemcacheCache(self.location, params)

    def test_shard_states_from_options_and_at_run_time(self, cache: Any) -> None:
        cache.set("k", 1)
        states = [[address, "DOWN"] for address in self.location]
        down = ShardedMemcacheCache(self.location, {"OPTIONS": {"SHARD_STATES": states}})
        assert down.get("k") is None  # a DOWN shard is never contacted
        assert down.add("lock", 1) is False  # add-as-a-lock stays safe
        cache.update_shard_states([ShardState(a, MemcachedState.WRITE_ONLY) for a in self.location])
        assert cache.get("k") is None
        with pytest.raises(ValueError, match="not found"):
            cache.incr("k")  # incr on a non-ACTIVE shard is a missing key
        cache.update_shard_states(self.location)
        assert cache.get("k") == 1  # the data never moved


def test_memcache_unsafe_keys_are_errors_there_and_warnings_on_redis(
    clean_memcached_servers: MemcachedServers, clean_redis_pool_servers: StandaloneRedis
) -> None:
    memcache = ShardedMemcacheCache(clean_memcached_servers.addresses, {})
    with pytest.raises(InvalidCacheKey):
        memcache.set("has space", 1)
    redis_cache = ShardedRedisCache(clean_redis_pool_servers.urls, {})
    with pytest.warns(CacheKeyWarning, match="memcached"):
        redis_cache.set("has space", 1)
    with pytest.warns(CacheKeyWarning):
        assert redis_cache.get("has space") == 1  # a warning only: redis takes the key
    for unsafe in ["x" * 251, "tab\there", "del\x7f", "nul\x00"]:
        with pytest.warns(CacheKeyWarning):
            redis_cache.has_key(unsafe)
        with pytest.raises(InvalidCacheKey):
            memcache.has_key(unsafe)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        redis_cache.set("ünïcødé-κλειδί:" + "y" * 200, 1)  # long, non-ASCII, yet safe


def test_close_keeps_the_pools(clean_redis_pool_servers: StandaloneRedis) -> None:
    cache = ShardedRedisCache(clean_redis_pool_servers.urls, {})
    cache.set("k", 1)
    core = cache.core
    cache.close()  # Django calls it at every request_finished
    assert cache.core is core
    assert cache.get("k") == 1


BAD_ENTRIES = {
    "shardcache.E001": ("ShardedRedisCache", ["127.0.0.1:1"], {"SERIALISER": "json"}),
    "shardcache.E002": ("RedisClusterCache", "", {}),
    "shardcache.E003": ("ShardedRedisCache", ["redis://h:notaport"], {}),
    "shardcache.E004": ("ShardedRedisCache", ["127.0.0.1:1"], {"HASH": "md6"}),
    "shardcache.E005": ("ShardedMemcacheCache", ["127.0.0.1:1"], {"COMPRESSOR": "brotli"}),
}


@pytest.mark.parametrize("code", list(BAD_ENTRIES))
def test_system_checks_report_each_misconfiguration(code: str) -> None:
    backend, location, options = BAD_ENTRIES[code]
    entry = {
        "BACKEND": f"shardcache_django.cache.{backend}",
        "LOCATION": location,
        "OPTIONS": options,
    }
    with override_settings(CACHES={"default": entry}):
        errors = check_caches()
    assert [e.id for e in errors] == [code]
    assert errors[0].obj == "CACHES['default']"
    cls = {"ShardedRedisCache": ShardedRedisCache, "RedisClusterCache": RedisClusterCache}.get(
        backend, ShardedMemcacheCache
    )
    with pytest.raises(ImproperlyConfigured, match=code):
        cls(location, {"OPTIONS": options}).get("k")


def test_sentinel_and_memcache_specific_checks() -> None:
    caches = {
        "no_masters": {
            "BACKEND": "shardcache_django.cache.RedisSentinelCache",
            "LOCATION": "127.0.0.1:26379",
        },
        "bad_state": {
            "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
            "LOCATION": ["127.0.0.1:11211"],
            "OPTIONS": {"SHARD_STATES": [["127.0.0.1:11211", "SLEEPY"]]},
        },
        "fine": {
            "BACKEND": "shardcache_django.cache.ShardedRedisCache",
            "LOCATION": "127.0.0.1:1,127.0.0.1:2",
        },
    }
    with override_settings(CACHES=caches):
        errors = check_caches()
    assert sorted((e.obj, e.id) for e in errors) == [
        ("CACHES['bad_state']", "shardcache.E003"),
        ("CACHES['no_masters']", "shardcache.E004"),
    ]
