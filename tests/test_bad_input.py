"""Bad input, chosen by hypothesis, on real servers: every key, value and setting either
works or gets a typed error (or a documented miss), and nothing already stored changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shardcache import (
    Cache,
    ConfigurationError,
    HashPool,
    MemcacheTopology,
    ShardcacheError,
)
from shardcache.backends import problems
from shardcache.testing import MemcachedServers, StandaloneRedis
from shardcache.topologies.memcache import ShardedMemcacheClient, StaticShardManager

KEEP = {"keep:a": "precious", "keep:b": 12345}
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

keys = st.one_of(
    st.text(min_size=0, max_size=300),  # spaces, control characters, long, empty
    st.binary(min_size=0, max_size=300),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
)


class Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("no pickling me")


values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=50),
    st.binary(max_size=50),
    st.just(Unpicklable()),
    st.just(b"x" * (1024 * 1024 + 10)),  # past memcached's default 1 MiB item
    st.just("y" * 70_000),  # past the configured maximum below
)


@pytest.fixture(params=["redis", "memcache"])
def cache(
    request: pytest.FixtureRequest,
    clean_redis_pool_servers: StandaloneRedis,
    clean_memcached_servers: MemcachedServers,
) -> Iterator[Cache]:
    if request.param == "redis":
        cache = Cache(HashPool(clean_redis_pool_servers.urls), prefix="t:", max_value_size=65536)
    else:
        client = ShardedMemcacheClient(StaticShardManager(clean_memcached_servers.addresses))
        cache = Cache(MemcacheTopology(client), prefix="t:", max_value_size=65536)
    cache.set_many(KEEP)
    yield cache
    cache.close()


@SETTINGS
@given(key=keys, value=values)
def test_any_key_and_value_works_or_is_a_typed_error(cache: Cache, key: Any, value: Any) -> None:
    try:
        stored = cache.set(key, value)
    except ShardcacheError:  # InvalidKeyError, SerializationError, a server's refusal
        stored = None
    if stored:
        assert cache.get(key) == value
    assert cache.get_many(list(KEEP)) == KEEP  # nothing already stored changed


@SETTINGS
@given(garbage=st.binary(max_size=200))
def test_planted_bytes_read_as_a_miss_or_a_value_never_an_exception(
    cache: Cache, garbage: bytes
) -> None:
    shard = cache.topology.shard_for(b"t:planted")
    dialect = cache.dialect
    shard.execute(*dialect.set(b"t:planted", garbage, None, False))
    cache.get("planted", "missed")  # a value, or the default; never an exception
    cache.get_many(["planted", "keep:a"])
    assert cache.get_many(list(KEEP)) == KEEP


@SETTINGS
@given(
    name=st.sampled_from(
        ["CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "MAX_CONNECTIONS", "RETRY_TIMEOUT", "MAX_VALUE_SIZE"]
    ),
    value=st.one_of(st.text(max_size=8), st.floats(), st.integers(), st.none(), st.booleans()),
)
def test_wrong_typed_settings_are_check_errors_naming_the_option(name: str, value: Any) -> None:
    for kind in ("hashpool", "memcache"):
        found = problems(kind, ["127.0.0.1:1"], {name: value})
        for _, message in found:
            assert name in message  # a check error names the option; no exception escapes


def test_a_bad_flask_config_is_a_configuration_error() -> None:
    from flask import Flask
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="shardcache_flask.ShardedRedisCache",
        CACHE_SHARDCACHE_SERVERS=["redis://127.0.0.1:1"],
        CACHE_SHARDCACHE_SOCKET_TIMEOUT="soon",
    )
    with pytest.raises(ConfigurationError, match="SOCKET_TIMEOUT"):
        FlaskCache(app)


# --- the same through the adapters ----------------------------------------------------------

django_keys = st.one_of(st.text(min_size=0, max_size=300), st.integers(), st.binary(max_size=20))


@pytest.fixture(params=["ShardedRedisCache", "ShardedMemcacheCache"])
def django_cache(
    request: pytest.FixtureRequest,
    clean_redis_pool_servers: StandaloneRedis,
    clean_memcached_servers: MemcachedServers,
) -> Iterator[Any]:
    from django.core.cache import caches
    from django.test import override_settings

    location = (
        clean_redis_pool_servers.urls
        if request.param == "ShardedRedisCache"
        else clean_memcached_servers.addresses
    )
    entry = {
        "BACKEND": f"shardcache_django.cache.{request.param}",
        "LOCATION": location,
        "OPTIONS": {"MAX_VALUE_SIZE": 65536},
    }
    with override_settings(CACHES={"default": entry}):
        cache = caches["default"]
        cache.set_many(KEEP)
        yield cache


@SETTINGS
@given(key=django_keys, value=values)
def test_django_backends_take_any_key_and_value_or_raise_a_typed_error(
    django_cache: Any, key: Any, value: Any
) -> None:
    import warnings

    from django.core.cache.backends.base import CacheKeyWarning, InvalidCacheKey

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheKeyWarning)  # Redis: a warning, as Django's
            django_cache.set(key, value)
            stored = django_cache.get(key, "missing")
    except (InvalidCacheKey, ShardcacheError):
        stored = "refused"
    assert stored in ("refused", "missing", value)
    assert django_cache.get_many(list(KEEP)) == KEEP


@SETTINGS
@given(key=st.text(min_size=0, max_size=300), value=values)
def test_flask_backends_take_any_key_and_value_or_report_failure(
    clean_redis_pool_servers: StandaloneRedis, key: str, value: Any
) -> None:
    from flask import Flask
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    app.config.update(
        CACHE_TYPE="shardcache_flask.ShardedRedisCache",
        CACHE_SHARDCACHE_SERVERS=clean_redis_pool_servers.urls,
        CACHE_SHARDCACHE_MAX_VALUE_SIZE=65536,
    )
    cache = FlaskCache(app)
    with app.app_context():
        cache.set_many(KEEP)
        try:
            stored = cache.set(key, value)
        except ShardcacheError:
            stored = False
        if stored:
            assert cache.get(key) == value
        assert cache.get_many(*KEEP) == list(KEEP.values())
