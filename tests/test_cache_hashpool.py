"""`Cache` on a `HashPool` of 3 real redis-servers, and the pool's own API."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shardcache import Cache, HashPool, ShardUnavailableError
from shardcache.connections import RedisShard
from shardcache.errors import ConfigurationError
from shardcache.testing import StandaloneRedis, wait_until
from tests.cache_contract import CacheContract, RawClient


def raw_client_for(pool: HashPool) -> RawClient:
    clients: dict[int, redis.Redis] = {}

    def raw(key: bytes) -> redis.Redis:
        index = pool.index(key)
        if index not in clients:
            clients[index] = pool.shards()[index].client()
        return clients[index]

    return raw


class TestHashPoolCache(CacheContract):
    options: dict[str, Any] = {}
    pool_options: dict[str, Any] = {}

    @pytest.fixture
    def pool(self, clean_redis_pool_servers: StandaloneRedis) -> Iterator[HashPool]:
        pool = HashPool(clean_redis_pool_servers.urls, **self.pool_options)
        yield pool
        pool.close()

    @pytest.fixture
    def cache(self, pool: HashPool) -> Cache:
        return Cache(pool, prefix="t:", **self.options)

    @pytest.fixture
    def raw(self, pool: HashPool) -> RawClient:
        return raw_client_for(pool)


class TestSignedCompressedKetamaCache(TestHashPoolCache):
    """The same contract with every option on: signatures, zstd, consistent hashing."""

    options = {
        "compressor": "zstd",
        "compress_threshold": 64,
        "signing_secret": "0123456789abcdef0123456789abcdef",
    }
    pool_options = {"hash": "ketama"}


@pytest.fixture
def pool(clean_redis_pool_servers: StandaloneRedis) -> Iterator[HashPool]:
    pool = HashPool(clean_redis_pool_servers.urls)
    yield pool
    pool.close()


class CommandCounter:
    """Counts the commands each server runs (INFO commandstats), leaving out its own probes."""

    OWN = frozenset({"cmdstat_info", "cmdstat_config|resetstat"})

    def __init__(self, servers: StandaloneRedis) -> None:
        self.probes = [server.client() for server in servers.servers]

    def reset(self) -> None:
        for probe in self.probes:
            probe.config_resetstat()

    def counts(self) -> list[dict[str, int]]:
        result = []
        for probe in self.probes:
            stats = probe.info("commandstats")
            result.append({k: v["calls"] for k, v in stats.items() if k not in self.OWN})
        return result


def test_get_many_of_300_keys_is_one_mget_per_shard(
    pool: HashPool, clean_redis_pool_servers: StandaloneRedis
) -> None:
    cache = Cache(pool, prefix="t:")
    keys = [f"key{i}" for i in range(300)]
    cache.set_many({key: key for key in keys})
    counter = CommandCounter(clean_redis_pool_servers)
    counter.reset()

    assert len(cache.get_many(keys)) == 300

    assert counter.counts() == [{"cmdstat_mget": 1}] * 3


def test_multi_key_writes_are_one_round_trip_per_shard(
    pool: HashPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(pool, prefix="t:")
    sent: list[str] = []
    real_begin = RedisShard.begin

    def counting_begin(shard: RedisShard, commands: Any) -> Any:
        sent.append(shard.id)
        return real_begin(shard, commands)

    monkeypatch.setattr(RedisShard, "begin", counting_begin)  # a spy: the real call still runs
    assert cache.set_many({f"k{i}": i for i in range(300)}) == []
    assert sorted(sent) == sorted(pool.id(i) for i in range(3))
    sent.clear()
    assert cache.delete_many([f"k{i}" for i in range(300)]) == 300
    assert sorted(sent) == sorted(pool.id(i) for i in range(3))


def test_a_stopped_shard_is_a_typed_error_or_misses_with_ignore_errors(
    clean_redis_pool_servers: StandaloneRedis, caplog: pytest.LogCaptureFixture
) -> None:
    pool = HashPool(clean_redis_pool_servers.urls, connect_timeout=0.5, read_timeout=0.5)
    strict = Cache(pool, prefix="t:")
    lenient = Cache(pool, prefix="t:", ignore_errors=True)
    keys = [f"key{i}" for i in range(60)]
    strict.set_many({key: key for key in keys})
    down_index = pool.index(b"t:" + keys[0].encode())
    on_down = [k for k in keys if pool.index(b"t:" + k.encode()) == down_index]
    elsewhere = [k for k in keys if k not in on_down]

    clean_redis_pool_servers.kill(clean_redis_pool_servers.servers[down_index])

    with pytest.raises(ShardUnavailableError) as error:
        strict.get(on_down[0])
    assert pool.id(down_index) in str(error.value)
    with pytest.raises(ShardUnavailableError):
        strict.get_many(keys)
    assert lenient.get(on_down[0], "miss") == "miss"
    assert lenient.get_many(keys) == {k: k for k in elsewhere}
    assert lenient.set(on_down[0], "v") is False
    assert sorted(lenient.set_many(dict.fromkeys(keys, 1))) == sorted(on_down)
    assert lenient.add(on_down[0], "v") is False
    assert lenient.has(on_down[0]) is False
    assert "ignore_errors" in caplog.text
    pool.close()


def test_a_restarted_server_is_used_again_without_errors_for_reads(
    clean_redis_pool_servers: StandaloneRedis, pool: HashPool
) -> None:
    cache = Cache(pool, prefix="t:")
    cache.set("k", "v")  # leaves pooled connections to that server
    server = clean_redis_pool_servers.servers[pool.index(b"t:k")]
    clean_redis_pool_servers.kill(server)
    clean_redis_pool_servers.restart(server)
    assert cache.get("k") is None  # stale pooled connection retried once, silently
    assert cache.set("k", "again") is True


def test_signed_cache_rejects_values_tampered_with_on_the_server(pool: HashPool) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    signed = Cache(pool, prefix="t:", signing_secret=secret)
    signed.set("role", {"admin": False})
    raw = raw_client_for(pool)
    stored = raw(b"t:role").get(b"t:role")
    assert stored is not None
    raw(b"t:role").set(b"t:role", stored[:-1] + bytes([stored[-1] ^ 1]))
    assert signed.get("role") is None
    Cache(pool, prefix="t:").set("role", {"admin": True})  # written without the secret
    assert signed.get("role") is None


def test_json_and_msgpack_serializers(pool: HashPool) -> None:
    for serializer in ("json", "msgpack"):
        cache = Cache(pool, prefix=f"{serializer}:", serializer=serializer, compressor="lz4")
        value = {"list": [1, 2, 3], "text": "é" * 2000}
        cache.set("k", value)
        assert cache.get("k") == value
        assert cache.get_many(["k"]) == {"k": value}


def test_misconfiguration_fails_at_construction(clean_redis_pool_servers: StandaloneRedis) -> None:
    urls = clean_redis_pool_servers.urls
    with pytest.raises(ConfigurationError, match="unknown serializer 'yaml'"):
        Cache(HashPool(urls), serializer="yaml")
    with pytest.raises(ConfigurationError, match="unknown compressor"):
        Cache(HashPool(urls), compressor="brotli")
    with pytest.raises(ConfigurationError, match="same server twice"):
        HashPool([urls[0], urls[0]])
    with pytest.raises(ConfigurationError, match="list"):
        HashPool(urls[0])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unknown hash"):
        HashPool(urls, hash="sha0")
    with pytest.raises(ConfigurationError, match="shard protocol"):
        Cache(object())  # type: ignore[arg-type]


# --- the Go pool API -------------------------------------------------------------------------


def test_index_size_id_and_with_key(
    pool: HashPool, clean_redis_pool_servers: StandaloneRedis
) -> None:
    assert pool.size() == 3
    assert [pool.id(i) for i in range(3)] == [
        f"127.0.0.1:{server.port}/0" for server in clean_redis_pool_servers.servers
    ]

    def write(conn: Any) -> Any:
        conn.send_command("SET", "plain", "1")
        return conn.read_response()

    assert pool.with_key("plain", write) == b"OK"
    with clean_redis_pool_servers.servers[pool.index("plain")].client() as conn:
        assert conn.get("plain") == "1"
    with pool.pipeline(pool.index("plain")) as pipe:
        assert pipe.get("plain").incr("plain").execute() == [b"1", 2]


def test_with_index_discards_the_connection_when_fn_raises(pool: HashPool) -> None:
    shard = pool.shards()[0]
    seen: list[Any] = []
    pool.with_index(0, seen.append)
    assert shard.pool.in_use == 0

    def fail(conn: Any) -> None:
        seen.append(conn)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        pool.with_index(0, fail)
    assert shard.pool.in_use == 0
    assert pool.with_index(0, lambda conn: conn) is not seen[-1]  # never handed out again


def test_an_exhausted_pool_fails_after_its_timeout(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    pool = HashPool(
        clean_redis_pool_servers.urls[:1], max_connections_per_instance=1, pool_timeout=0.2
    )
    held = threading.Event()
    release = threading.Event()

    def hold(conn: Any) -> None:
        held.set()
        release.wait(10)

    holder = threading.Thread(target=pool.with_index, args=(0, hold))
    holder.start()
    held.wait(10)
    with pytest.raises(ShardUnavailableError, match="pool exhausted"):
        Cache(pool).get("k")
    release.set()
    holder.join()
    assert Cache(pool).get("k") is None  # the connection came back
    pool.close()


def test_urls_with_credentials_and_database_numbers(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    server = clean_redis_pool_servers.servers[0]
    with server.client() as admin:
        admin.acl_setuser(
            "alice", enabled=True, passwords=["+s3cret"], keys=["*"], commands=["+@all"]
        )
    try:
        pool = HashPool([f"redis://alice:s3cret@127.0.0.1:{server.port}/3"])
        cache = Cache(pool, prefix="t:")
        cache.set("k", "v")
        with server.client(db=3) as conn:
            assert conn.exists("t:k") == 1
        with server.client(db=0) as conn:
            assert conn.exists("t:k") == 0
        wrong = Cache(HashPool([f"redis://alice:wrong@127.0.0.1:{server.port}/3"]))
        with pytest.raises(Exception, match=r"(?i)invalid username-password|WRONGPASS"):
            wrong.get("k")
        pool.close()
    finally:
        with server.client() as admin:
            admin.acl_deluser("alice")


def test_a_forked_child_never_reuses_the_parents_sockets(pool: HashPool) -> None:
    cache = Cache(pool, prefix="t:")
    cache.set_many({f"k{i}": i for i in range(30)})
    pid = os.fork()
    if pid == 0:  # the child: use the cache hard, then leave without cleanup
        ok = all(cache.get(f"k{i}") == i for i in range(30)) and cache.set("child", 1)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    # The parent's pooled connections are intact: replies are not crossed or lost.
    assert [cache.get(f"k{i}") for i in range(30)] == list(range(30))
    assert cache.get("child") == 1


def test_a_slow_shard_times_out_with_a_typed_error(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    # retry_timeout=0: no circuit breaker, so the asyncio call below meets the timeout too.
    pool = HashPool(
        clean_redis_pool_servers.urls, read_timeout=0.3, write_timeout=0.3, retry_timeout=0
    )
    cache = Cache(pool, prefix="t:")
    cache.set_many({"k": "v", "other": 1})
    server = clean_redis_pool_servers.servers[pool.index(b"t:k")]
    sleeper = server.client(socket_timeout=10)
    blocked = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "3"))
    blocked.start()

    def busy() -> bool:
        try:
            with server.client(socket_timeout=0.1) as probe:
                probe.ping()
        except redis.TimeoutError:
            return True
        return False

    try:
        wait_until(busy, timeout=10, what="the server to be busy in DEBUG SLEEP")
        with pytest.raises(ShardUnavailableError, match=r"(?i)timeout") as error:
            cache.get("k")
        assert pool.id(pool.index(b"t:k")) in str(error.value)
        # The asyncio path, in the same busy window: through a pool of its own, since this
        # one now holds the server back until it has answered the call that timed out.
        other = HashPool(
            clean_redis_pool_servers.urls, read_timeout=0.3, write_timeout=0.3, retry_timeout=0
        )
        try:
            asyncio.run(slow_async(Cache(other, prefix="t:")))
        finally:
            other.close()
        with pytest.raises(ShardUnavailableError, match="timed-out calls"):
            cache.get("k")
    finally:
        blocked.join()
        sleeper.close()
    # The shard answers again once it is not busy (and has closed the timed-out connection).
    wait_until(
        lambda: cache.get("k") == "v", timeout=10, what="the shard", errors=(ShardUnavailableError,)
    )
    assert asyncio.run(cache.aget("k")) == "v"
    pool.close()


async def slow_async(cache: Cache) -> None:
    with pytest.raises(ShardUnavailableError, match=r"(?i)timeout"):
        await cache.aget("k")
    with pytest.raises(ShardUnavailableError):
        await cache.aget_many(["k", "other"])


def test_tls_servers_through_rediss_urls() -> None:
    with StandaloneRedis(2, tls=True) as servers:
        assert all(url.startswith("rediss://") for url in servers.urls)
        pool = HashPool(servers.urls, ssl_ca_certs=servers.ca_file)
        cache = Cache(pool, prefix="t:")
        cache.set_many({f"k{i}": i for i in range(20)})
        assert cache.get_many([f"k{i}" for i in range(20)]) == {f"k{i}": i for i in range(20)}
        for server in servers.servers:  # both servers took keys, over TLS only
            with server.client() as conn:
                assert conn.dbsize() > 0
        untrusting = Cache(HashPool(servers.urls, connect_timeout=2))
        with pytest.raises(ShardUnavailableError, match=r"(?i)certificate verify failed"):
            untrusting.get("k1")
        pool.close()


@pytest.mark.parametrize("marker", ["hiredis default", "another object"])
def test_no_not_enough_data_marker_is_ever_taken_for_a_reply(pool: HashPool, marker: str) -> None:
    # redis-py hands its hiredis reader a private marker; whatever it passes (or if it stops
    # passing one), partial reads must be waited for, never returned as values.
    hiredis = pytest.importorskip("hiredis", reason="the hiredis read loop needs hiredis")
    from redis.exceptions import ResponseError

    cache = Cache(pool, prefix="t:")
    big = {f"k{i}": "v" * 50_000 for i in range(40)}  # replies arrive in many reads
    cache.set_many(big)
    shard = pool.shards()[0]
    conn = shard.pool.acquire()
    conn.connect()
    options: dict[str, Any] = {"replyError": ResponseError}
    if marker == "another object":
        options["notEnoughData"] = object()
    conn._parser._reader = hiredis.Reader(**options)  # type: ignore[union-attr]
    shard.pool.release(conn)
    keys = [cache.make_key(k) for k in big if pool.index(cache.make_key(k)) == 0]
    replies = shard.pipeline([(b"GET", k) for k in keys] + [(b"INCR", keys[0])])
    assert all(isinstance(reply, bytes) and len(reply) > 50_000 for reply in replies[:-1])
    assert "not an integer" in str(replies[-1])
