"""The Flask-Caching backends on real servers: one conformance class (cachelib's semantics,
Flask-Caching's factory keys, the ``cached`` / ``memoize`` / ``delete_memoized`` decorators
in a real app through the test client), four topologies."""

from __future__ import annotations

import datetime as dt
import socket
import threading
from collections.abc import Iterator
from typing import Any

import flask_caching
import pytest
from flask import Flask

from shardcache import ConfigurationError, MemcachedState, ShardState
from shardcache.testing import (
    MemcachedServers,
    RedisCluster,
    RedisSentinel,
    StandaloneRedis,
    wait_until,
)


def make_app(config: dict[str, Any]) -> tuple[Flask, flask_caching.Cache]:
    app = Flask(__name__)
    app.config.update(config)
    return app, flask_caching.Cache(app)


class FlaskCacheContract:
    """cachelib's cache contract through Flask-Caching; a subclass gives ``config()``."""

    redis = True  # prefix-only clear, TTL inspection

    def config(self) -> dict[str, Any]:
        raise NotImplementedError("a concrete test class gives the app's CACHE_* settings")

    @pytest.fixture
    def app(self) -> Iterator[tuple[Flask, flask_caching.Cache]]:
        app, cache = make_app({**self.config(), "CACHE_KEY_PREFIX": "flask:"})
        with app.app_context():
            cache.clear()
            yield app, cache

    @pytest.fixture
    def cache(self, app: tuple[Flask, flask_caching.Cache]) -> Any:
        return app[1].cache  # the backend object itself

    def test_the_backend_is_ours_and_built_by_its_factory(self, cache: Any) -> None:
        assert type(cache).__module__ == "shardcache_flask.cache"
        assert cache.key_prefix == "flask:"
        assert cache.default_timeout == 300

    def test_get_set_add_delete_return_cachelib_answers(self, cache: Any) -> None:
        assert cache.get("missing") is None
        assert cache.set("k", {"v": [1, 2]}) is True
        assert cache.get("k") == {"v": [1, 2]}
        assert cache.add("k", "other") is False
        assert cache.add("new", "value") is True
        assert cache.has("new") is True
        assert cache.delete("new") is True
        assert cache.delete("new") is False
        assert cache.has("new") is False
        assert cache.core.get("k") == {"v": [1, 2]}
        assert cache.core.prefix == b"flask:"

    def test_many(self, cache: Any) -> None:
        items = {f"k{i}": i for i in range(50)}
        assert cache.set_many(items) == list(items)
        assert cache.get_many("k1", "absent", "k2") == [1, None, 2]
        assert cache.get_dict("k3", "absent") == {"k3": 3, "absent": None}
        assert cache.delete_many(*items, "absent") == [*items, "absent"]
        assert cache.get_many(*items) == [None] * 50
        assert cache.delete_many() == []

    def test_inc_and_dec_create_at_zero_and_are_atomic(self, cache: Any) -> None:
        assert cache.inc("n") == 1
        assert cache.inc("n", 5) == 6
        assert cache.dec("n", 2) == 4
        assert cache.get("n") == 4

        def bump() -> None:
            for _ in range(50):
                cache.inc("counted")

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.get("counted") == 200

    def test_timeouts(self, cache: Any) -> None:
        cache.set("default", 1)  # None: the default timeout (300)
        cache.set("forever", 1, timeout=0)
        cache.set("gone", 1, timeout=-1)
        cache.set("delta", 1, timeout=dt.timedelta(minutes=2))
        cache.set("short", 1, timeout=1)
        assert cache.get("gone") is None
        assert cache.get("forever") == 1
        if self.redis:
            assert 290 < cache.core.ttl("default") <= 300
            assert cache.core.ttl("forever") is None
            assert 110 < cache.core.ttl("delta") <= 120
        wait_until(lambda: cache.get("short") is None, timeout=10, what="a 1 s entry to expire")
        assert cache.get("forever") == 1

    def test_clear_removes_this_prefix(self, cache: Any) -> None:
        other_app, other = make_app({**self.config(), "CACHE_KEY_PREFIX": "other:"})
        with other_app.app_context():
            other.set("k", "stays")
        cache.set("k", "goes")
        assert cache.clear() is True
        assert cache.get("k") is None
        if self.redis:
            with other_app.app_context():
                assert other.get("k") == "stays"

    def test_cached_view_through_the_test_client(self, app: tuple[Flask, Any]) -> None:
        flask_app, cache = app
        calls: list[int] = []

        @flask_app.route("/hello/<name>")
        @cache.cached(timeout=60)
        def hello(name: str) -> str:
            calls.append(1)
            return f"hello {name} #{len(calls)}"

        client = flask_app.test_client()
        assert client.get("/hello/ada").text == "hello ada #1"
        assert client.get("/hello/ada").text == "hello ada #1"  # from the cache
        assert client.get("/hello/bob").text == "hello bob #2"
        assert len(calls) == 2

    def test_memoize_and_delete_memoized(self, app: tuple[Flask, Any]) -> None:
        flask_app, cache = app
        calls: list[tuple[int, int]] = []

        @cache.memoize(timeout=60)
        def add(a: int, b: int) -> int:
            calls.append((a, b))
            return a + b

        class Prices:
            # memoize on a method: Flask-Caching reads several keys in one get_many,
            # keys that hash to different shards (slots, on a cluster).
            @cache.memoize(timeout=60)
            def price(self, item: str) -> str:
                calls.append((0, len(item)))
                return item.upper()

        assert [add(1, 2), add(1, 2), add(2, 3)] == [3, 3, 5]
        assert calls == [(1, 2), (2, 3)]
        cache.delete_memoized(add, 1, 2)
        assert add(1, 2) == 3
        assert add(2, 3) == 5
        assert calls == [(1, 2), (2, 3), (1, 2)]
        cache.delete_memoized(add)  # every argument
        add(2, 3)
        assert len(calls) == 4
        prices = Prices()
        assert [prices.price("tea"), prices.price("tea")] == ["TEA", "TEA"]
        assert len(calls) == 5
        with flask_app.test_request_context():
            assert flask_app.test_client().get("/").status_code == 404  # the app still serves

    def test_unknown_option_fails_at_init(self) -> None:
        with pytest.raises(ConfigurationError, match="BOGUS"):
            make_app({**self.config(), "CACHE_SHARDCACHE_BOGUS": 1})
        with pytest.raises(ConfigurationError, match="FROBNICATE"):
            make_app({**self.config(), "CACHE_OPTIONS": {"frobnicate": True}})

    def test_options_in_either_case_reach_the_core(self) -> None:
        config = {
            **self.config(),
            "CACHE_OPTIONS": {"compressor": "zlib"},
            "CACHE_SHARDCACHE_COMPRESS_THRESHOLD": 10,
            "CACHE_SHARDCACHE_SIGNING_SECRET": "s" * 32,
        }
        app, cache = make_app(config)
        with app.app_context():
            backend = cache.cache
            assert backend.core.codec.compressor is not None
            assert backend.core.codec.compress_threshold == 10
            cache.set("big", "x" * 1000)
            assert cache.get("big") == "x" * 1000


class TestShardedRedisFlask(FlaskCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_pool_servers: StandaloneRedis) -> None:
        self.urls = clean_redis_pool_servers.urls

    def config(self) -> dict[str, Any]:
        return {
            "CACHE_TYPE": "shardcache_flask.ShardedRedisCache",
            "CACHE_SHARDCACHE_SERVERS": self.urls,
            "CACHE_SHARDCACHE_HASH": "ketama",
        }

    def test_one_server_from_the_conventional_keys(self) -> None:
        host, _, port = self.urls[0].removeprefix("redis://").partition("/")[0].partition(":")
        for keys in [
            {"CACHE_REDIS_URL": self.urls[0]},
            {"CACHE_REDIS_HOST": host, "CACHE_REDIS_PORT": int(port), "CACHE_REDIS_DB": 0},
        ]:
            app, cache = make_app({"CACHE_TYPE": "shardcache_flask.ShardedRedisCache", **keys})
            with app.app_context():
                assert len(cache.cache.core.topology.shards()) == 1
                cache.set("one", 1)
                assert cache.get("one") == 1

    def test_delete_many_with_a_shard_down(self) -> None:
        config = {**self.config(), "CACHE_SHARDCACHE_SERVERS": [*self.urls, "redis://127.0.0.1:1"]}
        for ignore, expected in [(True, []), (False, RuntimeError)]:
            app, cache = make_app({**config, "CACHE_IGNORE_ERRORS": ignore})
            with app.app_context():
                keys = [f"k{i}" for i in range(30)]
                if expected is RuntimeError:
                    with pytest.raises(RuntimeError, match="Failed to delete"):
                        cache.delete_many(*keys)
                else:
                    assert cache.delete_many(*keys) == expected


class TestRedisClusterFlask(FlaskCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_cluster: RedisCluster) -> None:
        self.nodes = ",".join(node.address for node in clean_redis_cluster.nodes[:2])

    def config(self) -> dict[str, Any]:
        return {
            "CACHE_TYPE": "shardcache_flask.RedisClusterCache",
            "CACHE_REDIS_CLUSTER": self.nodes,
        }

    def test_clear_reaches_every_master(self, cache: Any) -> None:
        items = {f"k{i}": i for i in range(200)}
        cache.set_many(items)
        masters = cache.core.topology.shards()
        assert len({cache.core.topology.shard_for(b"flask:" + k.encode()) for k in items}) == 3
        cache.clear()
        for master in masters:
            assert master.client().dbsize() == 0


class TestRedisSentinelFlask(FlaskCacheContract):
    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_sentinel: RedisSentinel) -> None:
        self.sentinels = clean_redis_sentinel.sentinel_addresses

    def config(self) -> dict[str, Any]:
        return {
            "CACHE_TYPE": "shardcache_flask.RedisSentinelCache",
            "CACHE_REDIS_SENTINELS": self.sentinels,
            "CACHE_SHARDCACHE_MASTERS": ["bucket0", "bucket1"],
        }

    def test_one_master_from_the_conventional_key(self) -> None:
        app, cache = make_app(
            {
                "CACHE_TYPE": "shardcache_flask.RedisSentinelCache",
                "CACHE_REDIS_SENTINELS": self.sentinels,
                "CACHE_REDIS_SENTINEL_MASTER": "bucket1",
            }
        )
        with app.app_context():
            assert [s.name for s in cache.cache.core.topology.shards()] == ["bucket1"]
            cache.set("one", 1)
            assert cache.get("one") == 1


class TestShardedMemcacheFlask(FlaskCacheContract):
    redis = False

    @pytest.fixture(autouse=True)
    def _servers(self, clean_memcached_servers: MemcachedServers) -> None:
        self.servers = clean_memcached_servers.addresses

    def config(self) -> dict[str, Any]:
        return {
            "CACHE_TYPE": "shardcache_flask.ShardedMemcacheCache",
            "CACHE_MEMCACHED_SERVERS": self.servers,
        }

    def test_shard_states_from_config_and_at_run_time(self, cache: Any) -> None:
        cache.set("k", 1)
        states = [[address, "DOWN"] for address in self.servers]
        app, down = make_app({**self.config(), "CACHE_SHARDCACHE_SHARD_STATES": states})
        with app.app_context():
            assert down.get("k") is None  # a DOWN shard is never contacted
        cache.update_shard_states([ShardState(a, MemcachedState.WRITE_ONLY) for a in self.servers])
        assert cache.get("k") is None
        cache.update_shard_states(self.servers)
        assert cache.get("k") == 1


def test_no_module_path_says_cachelib() -> None:
    # Flask-Caching skips factory() for any CACHE_TYPE containing that word.
    import shardcache_flask

    for name in shardcache_flask.__all__:
        backend = getattr(shardcache_flask, name)
        if not isinstance(backend, type):
            continue  # get_redis_client
        assert "cachelib" not in f"{backend.__module__}.{backend.__qualname__}"
        assert issubclass(backend, flask_caching.backends.base.BaseCache)


def test_a_cache_that_is_down_does_not_stop_the_app_from_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[object] = []
    connect = socket.socket.connect

    def counted(self: socket.socket, address: object) -> None:
        attempts.append(address)
        connect(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", counted)
    app, cache = make_app(
        {
            "CACHE_TYPE": "shardcache_flask.ShardedRedisCache",
            "CACHE_SHARDCACHE_SERVERS": ["redis://127.0.0.1:1"],
            "CACHE_SHARDCACHE_IGNORE_ERRORS": True,
        }
    )
    assert attempts == []  # starting the app connects to nothing
    with app.app_context():
        assert cache.get("k") is None  # a miss, logged; not an exception
        assert cache.set("k", 1) is False
        assert cache.get_many("a", "b") == [None, None]
    assert len(attempts) == 1  # refused once; then the server is skipped (circuit breaker)
