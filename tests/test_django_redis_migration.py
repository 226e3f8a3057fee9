"""What the README's migration guide from django-redis maps, each on the three Redis
backends: django-redis's extra methods, its settings, its raw-client access and its errors.
(django-redis's own test suite runs against them too: ``./dev compat``.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import caches
from django.test import override_settings

import shardcache_django
from shardcache import CrossSlotError, ShardUnavailableError
from shardcache.testing import RedisCluster, RedisSentinel, StandaloneRedis
from shardcache_django.cache import BACKENDS as DJANGO_BACKENDS

BACKENDS = ["hashpool", "cluster", "sentinel"]
_CLASS = {kind: backend.__name__ for kind, backend in DJANGO_BACKENDS.items()}


def reverse_of(key: str) -> str:
    return key.split("#", 1)[1]


@pytest.fixture(params=BACKENDS)
def entry(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A CACHES entry for each Redis backend, on clean servers."""
    kind = request.param
    if kind == "hashpool":
        pool: StandaloneRedis = request.getfixturevalue("clean_redis_pool_servers")
        location, options = pool.urls, {}
    elif kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("clean_redis_cluster")
        location, options = [cluster.nodes[0].address], {}
    else:
        sentinel: RedisSentinel = request.getfixturevalue("clean_redis_sentinel")
        location = [f"{h}:{p}" for h, p in sentinel.sentinel_addresses]
        options = {"MASTERS": ["bucket0", "bucket1"]}
    return {
        "BACKEND": f"shardcache_django.cache.{_CLASS[kind]}",
        "LOCATION": location,
        "OPTIONS": options,
        "KIND": kind,
    }


@pytest.fixture
def cache(entry: dict[str, Any]) -> Iterator[Any]:
    with override_settings(CACHES={"default": entry}):
        yield caches["default"]


def test_set_with_nx_and_xx_says_whether_it_stored(cache: Any) -> None:
    assert cache.set("plain", 1) is None  # Django's set answers nothing
    assert cache.set("k", 1, nx=True) is True
    assert cache.set("k", 2, nx=True) is False
    assert cache.get("k") == 1
    assert cache.set("k", 3, timeout=-1, nx=True) is False  # NX: an existing key stays
    assert cache.get("k") == 1
    assert cache.set("absent", 1, xx=True) is False
    assert cache.get("absent") is None
    assert cache.set("k", 4, timeout=60, xx=True) is True
    assert cache.get("k") == 4
    assert 59 <= cache.ttl("k") <= 60
    with pytest.raises(ValueError, match="exclude"):
        cache.set("k", 5, nx=True, xx=True)


def test_delete_many_counts_what_it_deleted(cache: Any) -> None:
    cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.delete_many(["a", "b", "missing"]) == 2
    assert cache.delete_many(["a", "b"]) == 0
    assert cache.get_many(["a", "b", "c"]) == {"c": 3}


def test_incr_with_ignore_key_check_and_past_64_bits(cache: Any) -> None:
    with pytest.raises(ValueError, match="not found"):
        cache.incr("n")  # Django's contract: a missing key
    assert cache.incr("n", 10, ignore_key_check=True) == 10
    cache.set("big", 2**63 - 1)
    assert cache.incr("big") == 2**63
    assert cache.get("big") == 2**63
    assert cache.decr("big", 2) == 2**63 - 2
    assert cache.incr("big", 2**64) == 2**64 + 2**63 - 2


def test_ttl_in_whole_seconds_pttl_in_milliseconds(cache: Any) -> None:
    cache.set("t", 1, timeout=10)
    assert cache.ttl("t") == 10  # an int, as django-redis's (was 9.999)
    assert isinstance(cache.ttl("t"), int)
    assert 9_000 <= cache.pttl("t") <= 10_000
    cache.set("forever", 1, timeout=None)
    assert cache.ttl("forever") is None
    assert cache.pttl("forever") is None
    assert cache.ttl("missing") == 0
    assert cache.pttl("missing") == 0


def test_expire_at_pexpire_and_pexpire_at(cache: Any) -> None:
    cache.set("e", 1, timeout=None)
    assert cache.pexpire("e", 20_500) is True
    assert 20_000 <= cache.pttl("e") <= 20_500
    in_an_hour = dt.datetime.now() + dt.timedelta(hours=1)
    assert cache.expire_at("e", in_an_hour) is True
    assert 3590 <= cache.ttl("e") <= 3600
    assert cache.pexpire_at("e", int((time.time() + 100) * 1000)) is True
    assert 95 <= cache.ttl("e") <= 100
    assert cache.expire_at("e", time.time() - 10) is True  # in the past: gone
    assert cache.get("e") is None
    assert cache.expire_at("missing", in_an_hour) is False
    assert cache.pexpire("missing", 1000) is False


def test_lock_takes_redis_pys_arguments(cache: Any) -> None:
    held = cache.lock("job", timeout=10, thread_local=False)
    assert held.acquire(blocking=True)
    assert not cache.lock("job", blocking=False).acquire()
    assert not cache.lock("job", blocking_timeout=0.1).acquire()
    releaser = threading.Thread(target=held.release)  # another thread may release it
    releaser.start()
    releaser.join()
    assert not cache.has_key("job")
    assert cache.lock("job", blocking=False).acquire()


def test_iter_keys_with_itersize_and_a_reverse_key_function(entry: dict[str, Any]) -> None:
    custom = {
        **entry,
        "KEY_FUNCTION": lambda key, prefix, version: f"{prefix}:{version}#{key}",
        "REVERSE_KEY_FUNCTION": f"{__name__}.reverse_of",
    }
    with override_settings(CACHES={"default": entry, "custom": custom}):
        plain, reversed_ = caches["default"], caches["custom"]
        plain.set_many({f"user:{i}": i for i in range(25)})
        assert sorted(plain.iter_keys("user:*", itersize=2)) == sorted(
            f"user:{i}" for i in range(25)
        )
        reversed_.set_many({"item:1": 1, "item:2": 2})
        assert sorted(reversed_.iter_keys("item:*")) == ["item:1", "item:2"]
        assert plain.delete_pattern("user:*", itersize=5) == 25


def test_hashes_sets_and_sorted_sets(cache: Any, entry: dict[str, Any]) -> None:
    assert cache.hset("h", "name", "Ada") == 1
    assert cache.hset("h", mapping={"age": 36, "langs": ["en", "fr"]}) == 2
    assert cache.hget("h", "langs") == ["en", "fr"]
    assert cache.hgetall("h") == {"name": "Ada", "age": 36, "langs": ["en", "fr"]}
    assert (cache.hlen("h"), cache.hexists("h", "age"), cache.hexists("h", "x")) == (3, True, False)
    assert sorted(cache.hkeys("h")) == ["age", "langs", "name"]
    assert cache.hdel("h", "age", "nope") == 1

    assert cache.sadd("s", "a", "b", ("t", 1)) == 3
    assert cache.smembers("s") == {"a", "b", ("t", 1)}
    assert cache.sismember("s", ("t", 1)) is True
    assert cache.smismember("s", "a", "z") == [True, False]
    assert cache.srem("s", "a") == 1
    assert cache.scard("s") == 2
    assert cache.sscan("s", match="b") == {"b"}
    assert sorted(map(str, cache.sscan_iter("s", count=1))) == ["('t', 1)", "b"]
    assert cache.srandmember("s") in {"b", ("t", 1)}
    assert sorted(map(str, cache.srandmember("s", 5))) == ["('t', 1)", "b"]
    assert cache.srandmember("empty") is None
    assert cache.spop("s", 5) == {"b", ("t", 1)}
    assert cache.spop("s") is None

    assert cache.zadd("z", {"low": 1.5, "high": 10.0}) == 2
    assert cache.zscore("z", "low") == 1.5  # a RESP3 double: this used to hang the read
    assert cache.zincrby("z", 2.0, "low") == 3.5
    assert cache.zrange("z", 0, -1, withscores=True) == [("low", 3.5), ("high", 10.0)]
    assert cache.zrevrangebyscore("z", "+inf", 5) == ["high"]
    assert cache.zrank("z", "high") == 1
    assert cache.zadd("z", {"mid": 5.0, "gone": 7.0}) == 2
    assert (cache.zcard("z"), cache.zcount("z", 4, 8), cache.zcard("nothing")) == (4, 2, 0)
    assert cache.zrangebyscore("z", 4, "+inf", withscores=True) == [
        ("mid", 5.0),
        ("gone", 7.0),
        ("high", 10.0),
    ]
    assert cache.zrangebyscore("z", "-inf", "+inf", start=1, num=2) == ["mid", "gone"]
    assert cache.zrevrange("z", 0, 1) == ["high", "gone"]
    assert cache.zrem("z", "gone", "never") == 1
    assert cache.zremrangebyscore("z", 4, 6) == 1  # mid
    assert cache.zpopmax("z") == ("high", 10.0)
    assert cache.zpopmin("z", count=3) == [("low", 3.5)]

    # Several keys in one command: one shard. On a cluster a {hash tag} puts them there.
    if entry["KIND"] == "cluster":
        a, b, c = "{tags}:a", "{tags}:b", "{tags}:all"
    else:
        a, b, c = _together(cache, 3)
        far = next(f"f{i}" for i in range(1000) if _shard(cache, f"f{i}") is not _shard(cache, a))
        with pytest.raises(CrossSlotError, match="different shards"):
            cache.sunion(a, far)
    cache.sadd(a, "x", "y")
    cache.sadd(b, "y", "z")
    assert cache.sinter(a, b) == {"y"}
    assert cache.sdiff(a, b) == {"x"}
    assert cache.sdiffstore(c, a, b) == 1
    assert cache.smembers(c) == {"x"}
    assert cache.sinterstore(c, a, b) == 1
    assert cache.smembers(c) == {"y"}
    assert cache.sunionstore(c, a, b) == 3
    assert cache.smove(a, b, "x") is True
    assert cache.smembers(b) == {"x", "y", "z"}


def _shard(cache: Any, key: str) -> Any:
    return cache.core.topology.shard_for(cache.core.make_key(cache.make_key(key)))


def _together(cache: Any, count: int) -> list[str]:
    """``count`` keys on one shard."""
    home = _shard(cache, "t0")
    return [k for k in (f"t{i}" for i in range(1000)) if _shard(cache, k) is home][:count]


def test_raw_clients_are_on_the_server_holding_the_key(cache: Any, entry: dict[str, Any]) -> None:
    for i in range(20):
        cache.set(f"raw{i}", i)
        stored = cache.make_key(f"raw{i}")
        for client in (
            shardcache_django.get_redis_client("default", f"raw{i}"),
            shardcache_django.get_redis_connection("default", key=f"raw{i}"),
            cache.client.get_client(key=f"raw{i}"),
        ):
            assert isinstance(client, redis.Redis)
            assert client.exists(stored) == 1  # the key really is on that server
    if entry["KIND"] == "cluster":
        whole = shardcache_django.get_redis_connection("default")
        assert isinstance(whole, redis.cluster.RedisCluster)
        assert whole.exists(cache.make_key("raw3")) == 1
    elif entry["KIND"] == "hashpool":
        with pytest.raises(Exception, match="pass the key"):
            shardcache_django.get_redis_connection("default")
    with (
        override_settings(
            CACHES={"mc": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        ),
        pytest.raises(TypeError, match="not a shardcache backend"),
    ):
        shardcache_django.get_redis_client("mc")


def _down(entry: dict[str, Any], **options: Any) -> dict[str, Any]:
    dead = ["redis://127.0.0.1:1/0"] if entry["KIND"] == "hashpool" else ["127.0.0.1:1"]
    return {**entry, "LOCATION": dead, "OPTIONS": {**entry["OPTIONS"], **options}}


def test_outages_are_redis_connection_errors(entry: dict[str, Any]) -> None:
    with (
        override_settings(CACHES={"default": _down(entry, CONNECT_TIMEOUT=0.2)}),
        pytest.raises(redis.exceptions.ConnectionError) as caught,  # as django-redis code does
    ):
        caches["default"].get("k")
    assert isinstance(caught.value, ShardUnavailableError)


def test_django_redis_ignore_settings(
    entry: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(CACHES={"default": _down(entry, IGNORE_EXCEPTIONS=True)}):
        assert caches["default"].get("k", "miss") == "miss"
    assert "ignored" in caplog.text
    caplog.clear()
    quiet = _down(entry, LOG_IGNORED_EXCEPTIONS=False)
    with override_settings(CACHES={"default": quiet}, DJANGO_REDIS_IGNORE_EXCEPTIONS=True):
        assert caches["default"].get("k", "miss") == "miss"
    assert "ignored" not in caplog.text
    with (
        caplog.at_level(logging.WARNING),
        override_settings(
            CACHES={"default": _down(entry, IGNORE_ERRORS=False, CONNECT_TIMEOUT=0.2)},
            DJANGO_REDIS_IGNORE_EXCEPTIONS=True,
        ),
        pytest.raises(ShardUnavailableError),
    ):
        caches["default"].get("k")  # the entry's own option wins over the global one


def test_flask_raw_client_is_on_the_server_holding_the_key(entry: dict[str, Any]) -> None:
    import flask
    import flask_caching

    import shardcache_flask

    app = flask.Flask(__name__)
    app.config.update(
        CACHE_TYPE=f"shardcache_flask.{_CLASS[entry['KIND']]}",
        CACHE_ARGS=entry["LOCATION"],
        CACHE_KEY_PREFIX="app:",
        **{f"CACHE_SHARDCACHE_{name}": value for name, value in entry["OPTIONS"].items()},
    )
    cache = flask_caching.Cache(app)
    with app.app_context():
        for i in range(10):
            cache.set(f"k{i}", i)
            client = shardcache_flask.get_redis_client(cache, f"k{i}")
            assert client.exists(f"app:k{i}") == 1
    with pytest.raises(TypeError, match="not a shardcache backend"):
        shardcache_flask.get_redis_client(object())


def test_django_redis_serializer_and_compressor_paths_are_read_as_ours(
    entry: dict[str, Any],
) -> None:
    from shardcache.backends import problems

    options = {
        **entry["OPTIONS"],
        "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
        "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
        "COMPRESS_THRESHOLD": 10,
    }
    with override_settings(CACHES={"default": {**entry, "OPTIONS": options}}):
        cache = caches["default"]
        cache.set("doc", {"text": "x" * 100})
        assert cache.get("doc") == {"text": "x" * 100}
        raw = cache.get_redis_client("doc").get(cache.make_key("doc"))
        assert b"x" * 100 not in raw  # compressed, by zlib
    gzip = {"COMPRESSOR": "django_redis.compressors.gzip.GzipCompressor"}
    found = problems(entry["KIND"], entry["LOCATION"], {**entry["OPTIONS"], **gzip})
    assert [number for number, _ in found] == [5]
    assert "no shardcache twin" in found[0][1]


def test_command_reads_every_reply_type_sync_and_async(cache: Any) -> None:
    # redis-py 8 speaks RESP3: doubles, maps and sets come back as such (ZSCORE hung the
    # read loop once, taking its float for "not enough data yet").
    core = cache.core
    core.command("ZADD", "z", 1.5, b"m")
    core.command("HSET", "h", b"f", b"v")
    core.command("SADD", "s", b"a")

    async def replies() -> list[Any]:
        return [
            await core.acommand("ZSCORE", "z", b"m", read=True),
            await core.acommand("HGETALL", "h", read=True),
            await core.acommand("SMEMBERS", "s", read=True),
        ]

    for score, mapping, members in (
        [
            core.command("ZSCORE", "z", b"m", read=True),
            core.command("HGETALL", "h", read=True),
            core.command("SMEMBERS", "s", read=True),
        ],
        asyncio.run(replies()),
    ):
        assert float(score) == 1.5
        pairs = (
            mapping.items()
            if isinstance(mapping, dict)
            else zip(mapping[::2], mapping[1::2], strict=True)
        )
        assert dict(pairs) == {b"f": b"v"}
        assert set(members) == {b"a"}
