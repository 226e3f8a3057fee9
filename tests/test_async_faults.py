"""The asyncio path under faults, on real servers: dead and restarted shards, slots moved
behind the client's back, and a sentinel failover under asyncio traffic. (A slow shard and
replica reads are checked on both paths in test_cache_hashpool / test_cache_cluster.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from shardcache import (
    Cache,
    Cluster,
    HashPool,
    SentinelClient,
    ShardUnavailableError,
    aio,
    connections,
)
from shardcache.testing import RedisCluster, RedisSentinel, StandaloneRedis, wait_until


def test_a_stopped_shard_is_a_typed_error_or_misses_with_ignore_errors(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    pool = HashPool(clean_redis_pool_servers.urls, connect_timeout=0.5, read_timeout=0.5)
    strict = Cache(pool, prefix="t:")
    lenient = Cache(pool, prefix="t:", ignore_errors=True)
    keys = [f"key{i}" for i in range(60)]
    strict.set_many({key: key for key in keys})
    down = pool.index(b"t:" + keys[0].encode())
    on_down = [k for k in keys if pool.index(b"t:" + k.encode()) == down]
    elsewhere = {k: k for k in keys if k not in on_down}
    clean_redis_pool_servers.kill(clean_redis_pool_servers.servers[down])

    async def scenario() -> None:
        with pytest.raises(ShardUnavailableError) as error:
            await strict.aget(on_down[0])
        assert pool.id(down) in str(error.value)
        with pytest.raises(ShardUnavailableError):
            await strict.aget_many(keys)
        assert await lenient.aget(on_down[0], "miss") == "miss"
        assert await lenient.aget_many(keys) == elsewhere
        assert await lenient.aset(on_down[0], "v") is False
        assert sorted(await lenient.aset_many(dict.fromkeys(keys, 1))) == sorted(on_down)

    asyncio.run(scenario())
    pool.close()


def test_a_restarted_server_is_used_again_without_errors_for_reads(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    pool = HashPool(clean_redis_pool_servers.urls)
    cache = Cache(pool, prefix="t:")
    server = clean_redis_pool_servers.servers[pool.index(b"t:k")]

    async def scenario() -> None:
        await cache.aset("k", "v")  # leaves a pooled asyncio connection to that server
        await asyncio.to_thread(clean_redis_pool_servers.kill, server)
        await asyncio.to_thread(clean_redis_pool_servers.restart, server)
        assert await cache.aget("k") is None  # the stale connection is retried once
        assert await cache.aset("k", "again") is True
        assert await cache.aget("k") == "again"

    asyncio.run(scenario())
    pool.close()


def test_a_moved_slot_is_followed_and_patched(clean_redis_cluster: RedisCluster) -> None:
    cluster = Cluster([clean_redis_cluster.nodes[0].address])
    cache = Cache(cluster, prefix="t:")
    cache.set_many({"k": "v", "{k}2": "w"})
    number = cluster.slot(b"t:k")
    first = cluster.master_of(number).id
    target, third = (m for m in clean_redis_cluster.masters if m.address != first)
    clean_redis_cluster.migrate_slot(number, target)  # behind the client's back

    async def scenario() -> None:
        assert await cache.aget("k") == "v"  # MOVED, followed
        assert cluster.master_of(number).id == target.address  # and the map patched
        # Moved again: now a batch meets MOVED, and is repaired.
        await asyncio.to_thread(clean_redis_cluster.migrate_slot, number, third)
        assert await cache.aget_many(["k", "{k}2", "absent"]) == {"k": "v", "{k}2": "w"}
        assert await cache.adelete_many(["k", "{k}2"]) == 2

    asyncio.run(scenario())
    cluster.close()


def test_a_half_migrated_slot_answers_key_by_key(clean_redis_cluster: RedisCluster) -> None:
    cluster = Cluster([clean_redis_cluster.nodes[0].address])
    cache = Cache(cluster, prefix="t:")
    cache.set_many({"{s}a": 1, "{s}b": 2})
    number = cluster.slot(b"t:{s}")
    source = clean_redis_cluster.owner_of(number)
    target = next(m for m in clean_redis_cluster.masters if m is not source)
    migration = clean_redis_cluster.begin_slot_migration(number, target)
    assert migration.move_keys(limit=1) == 1  # TRYAGAIN for the MGET, ASK for one key

    async def scenario() -> None:
        assert await cache.aget_many(["{s}a", "{s}b"]) == {"{s}a": 1, "{s}b": 2}
        assert await cache.aget("{s}a") == 1
        assert await cache.aget("{s}b") == 2

    asyncio.run(scenario())
    migration.finish()
    cluster.close()


class AsyncTraffic:
    """Writes then reads back, from asyncio tasks on a loop in its own thread."""

    def __init__(self, cache: Cache, client: SentinelClient, tasks: int) -> None:
        self.cache, self.client, self.tasks = cache, client, tasks
        self.acked: list[str] = []
        self.stale = self.across_switch = self.errors = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()))

    async def main(self) -> None:
        await asyncio.gather(*(self.run(i) for i in range(self.tasks)))

    async def run(self, task: int) -> None:
        n = 0
        while not self.stop.is_set():
            key, n = f"a{task}:{n}", n + 1
            try:
                master = self.client.masters_now()
                await self.cache.aset(key, n)
                self.acked.append(key)
                if await self.cache.aget(key) != n:
                    if self.client.masters_now() == master:
                        self.stale += 1
                    else:
                        self.across_switch += 1
            except ShardUnavailableError:
                self.errors += 1
                await asyncio.sleep(0.01)

    def __enter__(self) -> AsyncTraffic:
        self.thread.start()
        wait_until(lambda: len(self.acked) > 200, timeout=30, what="traffic to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def test_sentinel_failover_under_asyncio_traffic(
    clean_redis_sentinel: RedisSentinel, shardcache_report: Callable[[str], None]
) -> None:
    client = SentinelClient(
        clean_redis_sentinel.sentinel_addresses, ["bucket0"], connect_timeout=0.5, read_timeout=2
    )
    traffic = AsyncTraffic(Cache(client, prefix="t:"), client, tasks=8)
    with traffic:
        new = clean_redis_sentinel.failover("bucket0", settle=False)
        wanted = f"{new[0]}:{new[1]}"
        wait_until(lambda: client.masters_now()["bucket0"] == wanted, timeout=15, what="switch")
        errors_at_switch = traffic.errors
        done = len(traffic.acked)
        wait_until(lambda: len(traffic.acked) > done + 500, timeout=30, what="traffic after")
        errors_after = traffic.errors - errors_at_switch
    lost = len(traffic.acked) - len(traffic.cache.get_many(traffic.acked))
    shardcache_report(
        f"planned sentinel failover, 8 asyncio tasks: {len(traffic.acked)} acknowledged "
        f"writes, {lost} lost, {traffic.stale} stale reads, {traffic.errors} errors"
    )
    assert traffic.stale == 0
    assert errors_after == 0
    assert lost <= max(16, len(traffic.acked) // 100)
    client.close()


def test_pools_of_a_closed_topology_are_not_reused(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    pool = HashPool(clean_redis_pool_servers.urls)
    cache = Cache(pool, prefix="t:")
    seen: list[Any] = []

    async def scenario() -> None:
        await cache.aset("k", 1)
        seen.extend(aio.pool_for(shard) for shard in pool.shards())
        pool.close()
        await asyncio.sleep(0)  # the close is scheduled on this loop
        assert all(p.closed for p in seen)

    asyncio.run(scenario())
    assert len(seen) == 3


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_connection_reset_mid_send_counts_as_sent_so_nothing_is_replayed(
    clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # The fault: the connection dies after the first of two commands went out whole. The
    # server ran that one, so the failure must say "sent": that is what keeps every retry
    # path (sentinel and cluster recovery included) from running the writes again.
    import redis
    import redis.asyncio

    pool = HashPool(clean_redis_pool_servers.urls[:1])
    shard = pool.shards()[0]
    commands = [(b"INCR", b"counter"), (b"INCR", b"counter")]
    first = b"".join(redis.Connection().pack_command(*commands[0]))
    cut = len(first) + 3  # all of the first command, some of the second

    asend = redis.asyncio.Connection.send_packed_command

    def half_then_reset(conn: Any, packed: list[bytes]) -> None:  # the sync write
        conn._sock.sendall(b"".join(packed)[:cut])
        raise redis.ConnectionError("connection reset mid-send")

    async def ahalf_then_reset(self: Any, command: Any, check_health: bool = True) -> None:
        data = b"".join(command) if isinstance(command, list) else command
        if b"INCR" not in data:
            return await asend(self, command, check_health)
        self._writer.write(data[:cut])
        await self._writer.drain()
        raise redis.ConnectionError("connection reset mid-send")

    monkeypatch.setattr(connections, "send", half_then_reset)
    monkeypatch.setattr(redis.asyncio.Connection, "send_packed_command", ahalf_then_reset)

    async def begin_async() -> None:
        await aio.pool_for(shard).begin(commands)  # type: ignore[union-attr]

    def begin() -> None:  # a fresh connection: made, then reset while sending
        if path == "sync":
            shard.begin(commands)
        else:
            asyncio.run(begin_async())

    with pytest.raises(ShardUnavailableError) as failed:
        begin()
    assert failed.value.sent is True
    monkeypatch.undo()
    assert int(shard.execute(b"GET", b"counter")) == 1  # the first one did run
    pool.close()


@pytest.mark.parametrize("path", ["sync", "async"])
def test_a_write_whose_reused_connection_dies_after_sending_is_not_replayed(
    clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # A pooled (reused) connection: a retry would be allowed for an idempotent command. The
    # write goes out whole, then the connection dies: INCRBY must run once, not twice.
    import redis
    import redis.asyncio

    cache = Cache(HashPool(clean_redis_pool_servers.urls[:1]))
    shard = cache.topology.shards()[0]
    asend = redis.asyncio.Connection.send_packed_command

    def sent_then_reset(conn: Any, packed: list[bytes]) -> None:
        conn._sock.sendall(b"".join(packed))
        raise redis.ConnectionError("connection reset after the write")

    async def asent_then_reset(self: Any, command: Any, check_health: bool = True) -> None:
        data = b"".join(command) if isinstance(command, list) else command
        if b"INCRBY" not in data:
            return await asend(self, command, check_health)
        self._writer.write(data)
        await self._writer.drain()
        raise redis.ConnectionError("connection reset after the write")

    async def run_async() -> None:
        await cache.aget("warm")  # leaves a pooled connection to reuse
        with monkeypatch.context() as patched:
            patched.setattr(redis.asyncio.Connection, "send_packed_command", asent_then_reset)
            await cache.aincr("counter", 5, create=True)

    def run_sync() -> None:
        cache.get("warm")
        with monkeypatch.context() as patched:
            patched.setattr(connections, "send", sent_then_reset)
            cache.incr("counter", 5, create=True)

    with pytest.raises(ShardUnavailableError) as failed:
        run_sync() if path == "sync" else asyncio.run(run_async())
    assert failed.value.sent is True
    assert int(shard.execute(b"GET", b"counter")) == 5  # ran once, never replayed
    cache.close()
