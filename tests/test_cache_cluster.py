"""`Cache` and the redisc-style controls on the real 6-node cluster."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from shardcache import (
    Cache,
    Cluster,
    CommandError,
    CrossSlotError,
    is_cross_slot,
    is_moved,
)
from shardcache.connections import RedisShard
from shardcache.hashing import slot
from shardcache.registry import Registry
from shardcache.testing import RedisCluster, wait_until
from tests.cache_contract import CacheContract, RawClient


def cluster_for(local: RedisCluster, **options: Any) -> Cluster:
    return Cluster([local.nodes[0].address], **options)


class TestClusterCache(CacheContract):
    @pytest.fixture
    def cluster(self, clean_redis_cluster: RedisCluster) -> Iterator[Cluster]:
        cluster = cluster_for(clean_redis_cluster)
        yield cluster
        cluster.close()

    @pytest.fixture
    def cache(self, cluster: Cluster) -> Cache:
        return Cache(cluster, prefix="t:")

    @pytest.fixture
    def raw(self, cluster: Cluster) -> RawClient:
        return lambda key: cluster.master_of(cluster.slot(key)).client()


@pytest.fixture
def cluster(clean_redis_cluster: RedisCluster) -> Iterator[Cluster]:
    cluster = cluster_for(clean_redis_cluster)
    yield cluster
    cluster.close()


def test_slots_match_the_servers_and_hash_tags(
    cluster: Cluster, clean_redis_cluster: RedisCluster
) -> None:
    rng = random.Random(7)
    keys = [f"key:{rng.random()}" for _ in range(100)] + ["{user1000}.following", "foo{}{bar}"]
    with clean_redis_cluster.nodes[0].client() as conn:
        for key in keys:
            assert cluster.slot(key) == conn.execute_command("CLUSTER", "KEYSLOT", key)
    assert cluster.slot("{user1000}.following") == cluster.slot("{user1000}.followers")
    assert cluster.slot("123456789") == 0x31C3


def test_split_by_slot_groups_in_the_callers_order(cluster: Cluster) -> None:
    keys = ["{a}1", "b", "{a}2", "{c}1", "{a}3", "{c}2"]
    groups = cluster.split_by_slot(keys)
    assert groups[slot("a")] == ["{a}1", "{a}2", "{a}3"]
    assert groups[slot("c")] == ["{c}1", "{c}2"]
    assert groups[slot("b")] == ["b"]
    assert len(groups) == 3


def test_bind_to_one_slot_works_and_across_slots_is_refused(cluster: Cluster) -> None:
    with cluster.bind("{user}:name", "{user}:mail") as conn:
        assert conn.execute("MSET", "{user}:name", "ada", "{user}:mail", "a@x") == b"OK"
        assert conn.pipeline([("GET", "{user}:name"), ("GET", "{user}:mail")]) == [b"ada", b"a@x"]
        assert conn.address == cluster.master_of(cluster.slot("{user}")).id
    with pytest.raises(CrossSlotError, match="span 2 slots"):
        cluster.bind("{user}:name", "{other}:name")


def test_a_cross_slot_command_on_one_node_is_reported_as_such(cluster: Cluster) -> None:
    a = "{a}"
    b = next(
        f"{{b{i}}}"
        for i in range(10_000)
        if cluster.master_of(slot(f"b{i}")).id == cluster.master_of(slot("a")).id
        and slot(f"b{i}") != slot("a")
    )
    with cluster.bind(a) as conn, pytest.raises(CommandError) as error:
        conn.execute("MSET", a, "1", b, "2")
    assert is_cross_slot(error.value)


def replica_gets(local: RedisCluster) -> dict[int, int]:
    counts = {}
    for replica in local.replicas:
        stats = replica.info("commandstats")
        counts[replica.port] = stats.get("cmdstat_get", {}).get("calls", 0)
    return counts


def test_read_only_binding_is_served_by_a_replica_and_refuses_writes(
    cluster: Cluster, clean_redis_cluster: RedisCluster
) -> None:
    owner = cluster.master_of(cluster.slot("k"))
    with owner.client() as conn:
        conn.set("k", "v")
        conn.wait(1, 5000)
    before = replica_gets(clean_redis_cluster)
    with cluster.bind("k", read_only=True) as conn:
        assert conn.address != owner.id
        assert conn.execute("GET", "k") == b"v"
        with pytest.raises(CommandError) as error:
            conn.execute("SET", "k", "w")
    assert is_moved(error.value)  # a replica sends writes to its master
    after = replica_gets(clean_redis_cluster)
    served = [port for port in after if after[port] > before.get(port, 0)]
    assert [f"127.0.0.1:{port}" for port in served] == [conn.address]


def test_cache_reads_from_replicas_when_asked_and_writes_to_masters(
    clean_redis_cluster: RedisCluster,
) -> None:
    cluster = cluster_for(clean_redis_cluster, read_from_replicas=True)
    cache = Cache(cluster, prefix="t:")
    keys = [f"k{i}" for i in range(60)]
    cache.set_many({key: key for key in keys})
    for master in clean_redis_cluster.masters:
        with master.client() as conn:
            conn.wait(1, 5000)
    before = replica_gets(clean_redis_cluster)
    assert [cache.get(key) for key in keys] == keys
    assert cache.get_many(keys) == {key: key for key in keys}
    after = replica_gets(clean_redis_cluster)
    assert sum(after.values()) - sum(before.values()) == len(keys)
    assert all(after[port] > before[port] for port in after)  # every replica served some

    async def on_asyncio() -> None:
        # Without READONLY a replica answers MOVED, and the master would serve these.
        assert [await cache.aget(key) for key in keys] == keys
        assert await cache.aget_many(keys) == {key: key for key in keys}

    asyncio.run(on_asyncio())
    assert sum(replica_gets(clean_redis_cluster).values()) - sum(after.values()) == len(keys)
    cluster.close()


def test_get_many_of_1000_keys_is_one_pipeline_per_master(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(cluster, prefix="t:")
    keys = [f"key:{i}" for i in range(1000)]
    assert cache.set_many({key: i for i, key in enumerate(keys)}) == []
    assert len({cluster.slot(b"t:" + key.encode()) for key in keys}) > 900
    sent: list[str] = []
    real_begin = RedisShard.begin

    def counting_begin(shard: RedisShard, commands: Any) -> Any:
        sent.append(shard.id)
        return real_begin(shard, commands)

    monkeypatch.setattr(RedisShard, "begin", counting_begin)  # a spy: the real call runs
    assert cache.get_many(keys) == {key: i for i, key in enumerate(keys)}
    assert sorted(sent) == sorted(node.id for node in cluster.shards())


@pytest.mark.parametrize("source_first", [False, True], ids=["target-first", "source-first"])
def test_live_resharding_loses_nothing_and_shows_no_error(
    cluster: Cluster, clean_redis_cluster: RedisCluster, source_first: bool
) -> None:
    # source-first: for 0.3 s the two nodes bounce the slot between them with MOVED; the
    # calls back off and re-read the map within their redirect budget instead of failing.
    cache = Cache(cluster, prefix="t:")
    keys = [f"{{hot}}:{i}" for i in range(200)]
    hot_slot = cluster.slot(b"t:{hot}")
    source = clean_redis_cluster.owner_of(hot_slot)
    target = next(m for m in clean_redis_cluster.masters if m is not source)
    written: dict[str, int] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            key = keys[n % len(keys)]
            try:
                cache.set(key, n)
                written[key] = n
                assert cache.get(key) == n
                if n % 10 == 0:
                    got = cache.get_many(keys[:20])
                    assert all(got[k] == written[k] for k in keys[:20] if k in written)
            except BaseException as exc:
                errors.append(exc)
                return
            n += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        wait_until(lambda: len(written) == len(keys), timeout=30, what="every key written")
        migration = clean_redis_cluster.begin_slot_migration(hot_slot, target)
        while migration.move_keys(limit=5):  # a few keys at a time: ASK replies meanwhile
            time.sleep(0.01)
        migration.finish(source_first=source_first, gap=0.3 if source_first else 0.0)
        done = len(written)
        wait_until(lambda: sum(written.values()) > done, timeout=30, what="traffic after it")
    finally:
        stop.set()
        worker.join()
    assert errors == []
    assert clean_redis_cluster.owner_of(hot_slot) is target
    assert cache.get_many(keys) == {key: written[key] for key in keys}


def test_cache_serves_the_slot_again_soon_after_its_master_fails_over(
    cluster: Cluster,
    clean_redis_cluster: RedisCluster,
    shardcache_report: Callable[[str], None],
) -> None:
    cache = Cache(cluster, prefix="t:")
    cache.set("k", "before")
    for master in clean_redis_cluster.masters:
        with master.client() as conn:
            conn.wait(1, 5000)
    victim = clean_redis_cluster.owner_of(cluster.slot(b"t:k"))
    clean_redis_cluster.kill(victim)

    def promoted() -> bool:
        return victim not in clean_redis_cluster.masters and len(clean_redis_cluster.masters) == 3

    wait_until(promoted, timeout=60, what="a replica to take over", errors=(redis.RedisError,))
    began = time.monotonic()

    def serves() -> bool:
        return bool(cache.get("k") == "before" and cache.set("k", "after"))

    wait_until(serves, timeout=10, what="the cache to serve the slot", errors=(Exception,))
    shardcache_report(
        f"cluster failover: cache served the slot {time.monotonic() - began:.2f}s after promotion"
    )
    assert cache.get("k") == "after"


def test_a_moved_reply_patches_the_slot_map_without_a_refresh(
    cluster: Cluster, clean_redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(cluster, prefix="t:")
    cache.set("k", "v")
    number = cluster.slot(b"t:k")
    target = next(
        m for m in clean_redis_cluster.masters if m.address != cluster.master_of(number).id
    )
    clean_redis_cluster.migrate_slot(number, target)  # behind the client's back
    refreshes: list[bool] = []
    real_refresh = Cluster.refresh
    monkeypatch.setattr(
        Cluster, "refresh", lambda self: refreshes.append(True) or real_refresh(self)
    )
    assert cache.get("k") == "v"  # MOVED, then served by the new owner
    assert cluster.master_of(number).id == target.address
    assert refreshes == []


def test_get_many_of_a_half_migrated_slot_answers_key_by_key(
    cluster: Cluster, clean_redis_cluster: RedisCluster
) -> None:
    cache = Cache(cluster, prefix="t:")
    cache.set_many({"{s}a": 1, "{s}b": 2})
    number = cluster.slot(b"t:{s}")
    source = clean_redis_cluster.owner_of(number)
    target = next(m for m in clean_redis_cluster.masters if m is not source)
    migration = clean_redis_cluster.begin_slot_migration(number, target)
    assert migration.move_keys(limit=1) == 1  # one key there, one here: MGET gets TRYAGAIN
    assert cache.get_many(["{s}a", "{s}b"]) == {"{s}a": 1, "{s}b": 2}
    assert cache.delete_many(["{s}a", "{s}b"]) == 2
    migration.finish()


def test_slot_map_falls_back_to_cluster_slots_when_shards_is_refused(
    clean_redis_cluster: RedisCluster,
) -> None:
    for node in clean_redis_cluster.nodes:  # a user that may not run CLUSTER SHARDS
        with node.client() as conn:
            conn.acl_setuser(
                "old",
                enabled=True,
                passwords=["+pw"],
                keys=["*"],
                commands=["+@all", "-cluster|shards"],
            )
    try:
        address = clean_redis_cluster.nodes[0].address
        limited = Cluster([f"redis://old:pw@{address}"])
        with pytest.raises(CommandError, match=r"(?i)noperm|permission"):
            limited.node(address).shard.execute(b"CLUSTER", b"SHARDS")
        full = cluster_for(clean_redis_cluster)
        assert [n.id for n in limited._map.owners] == [n.id for n in full._map.owners]
        assert Cache(limited).set("k", 1)
        stats = limited.stats()
        assert sorted(s["role"] for s in stats.values()) == ["master"] * 3 + ["slave"] * 3
        assert sum(s["slots"] for s in stats.values()) == 16384
        limited.close()
        full.close()
    finally:
        for node in clean_redis_cluster.nodes:
            with node.client() as conn:
                conn.acl_deluser("old")


def test_a_moved_slot_keeps_its_replicas_in_a_new_map() -> None:
    from shardcache.hashing import CLUSTER_SLOTS
    from shardcache.topologies.cluster import _SlotMap

    old_owner, new_owner = object(), object()
    before = _SlotMap(
        ("a:1",) * CLUSTER_SLOTS,
        (("b:1", "c:1"),) * CLUSTER_SLOTS,
        (old_owner,) * CLUSTER_SLOTS,  # type: ignore[arg-type]
    )
    after = before.moved(7, "b:1", new_owner)  # type: ignore[arg-type]
    assert (after.masters[7], after.replicas[7], after.owners[7]) == ("b:1", ("c:1",), new_owner)
    assert (before.masters[7], before.replicas[7]) == ("a:1", ("b:1", "c:1"))  # untouched
    assert after.masters[8] == "a:1"
    assert after.replicas[8] == ("b:1", "c:1")


def test_a_tls_only_cluster_is_dialled_on_its_tls_ports() -> None:
    # TLS only (no plaintext port): CLUSTER SHARDS lists each node's tls-port alone.
    with RedisCluster(masters=3, replicas_per_master=0, tls=True) as servers:
        registry = Registry()
        options = {"SSL_CA_CERTS": servers.ca_file, "SSL_CERT_REQS": "required"}
        cache = registry.cache("cluster", servers.urls, options, prefix="t:")
        items = {f"k{i}": i for i in range(60)}
        assert cache.set_many(items) == []
        assert cache.get_many(items) == items
        assert cache.incr("k1", 10) == 11
        assert asyncio.run(cache.aget_many(items)) == {**items, "k1": 11}
        owners = {shard.id for shard in cache.topology.shards()}
        assert owners == {f"127.0.0.1:{node.port}" for node in servers.nodes}
        registry.close()
