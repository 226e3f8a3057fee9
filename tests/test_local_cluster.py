"""shardcache.testing.RedisCluster: formed, readable from every node, reshardable, healable."""

from __future__ import annotations

import pytest
import redis
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster as RedisPyCluster

from shardcache.testing import RedisCluster, wait_until


def cluster_client(port: int) -> RedisPyCluster:
    return RedisPyCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port)],
        decode_responses=True,
        socket_timeout=5,
    )


def test_cluster_is_three_masters_each_with_an_attached_replica(
    clean_redis_cluster: RedisCluster,
) -> None:
    redis_cluster = clean_redis_cluster
    # Checked with CLUSTER SHARDS on every node, independently of the fixture's own readiness test.
    for node in redis_cluster.nodes:
        with node.client() as conn:
            assert "cluster_state:ok" in conn.execute_command("CLUSTER", "INFO")
            shards = conn.execute_command("CLUSTER", "SHARDS")
        assert len(shards) == 3
        covered = 0
        for shard in shards:
            roles = sorted(n["role"] for n in shard["nodes"] if n["health"] == "online")
            assert roles == ["master", "replica"]
            ranges = shard["slots"]
            covered += sum(ranges[i + 1] - ranges[i] + 1 for i in range(0, len(ranges), 2))
        assert covered == 16384
    for replica in redis_cluster.replicas:
        assert replica.info("replication")["master_link_status"] == "up"


def test_key_set_through_one_node_is_readable_through_every_node(
    clean_redis_cluster: RedisCluster,
) -> None:
    nodes = clean_redis_cluster.nodes
    keys = {f"key:{i}": f"value:{i}" for i in range(200)}  # spread over every master
    writer = cluster_client(nodes[0].port)
    try:
        for key, value in keys.items():
            writer.set(key, value)
    finally:
        writer.close()
    owners = {clean_redis_cluster.owner_of(clean_redis_cluster.slot_of(k)).port for k in keys}
    assert len(owners) == 3
    for node in nodes:
        reader = cluster_client(node.port)
        try:
            assert {key: reader.get(key) for key in keys} == keys
        finally:
            reader.close()


def test_a_node_that_does_not_own_the_slot_answers_moved(clean_redis_cluster: RedisCluster) -> None:
    slot = clean_redis_cluster.slot_of("somekey")
    owner = clean_redis_cluster.owner_of(slot)
    other = next(m for m in clean_redis_cluster.masters if m is not owner)
    with other.client() as conn, pytest.raises(redis.exceptions.MovedError) as moved:
        conn.get("somekey")
    assert (moved.value.slot_id, moved.value.port) == (slot, owner.port)


def test_migrate_slot_moves_keys_and_every_node_agrees(clean_redis_cluster: RedisCluster) -> None:
    cluster = clean_redis_cluster
    keys = [f"{{user42}}:field{i}" for i in range(250)]
    slot = cluster.slot_of(keys[0])
    client = cluster_client(cluster.nodes[0].port)
    try:
        for key in keys:
            client.set(key, key.upper())
        source = cluster.owner_of(slot)
        target = next(m for m in cluster.masters if m is not source)

        cluster.migrate_slot(slot, target)

        assert cluster.owner_of(slot) is target
        with target.client() as conn:
            assert conn.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(keys)
        with source.client() as conn:
            assert conn.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        fresh = cluster_client(cluster.nodes[-1].port)
        try:
            assert [fresh.get(key) for key in keys] == [key.upper() for key in keys]
        finally:
            fresh.close()
    finally:
        client.close()


def test_half_migrated_slot_answers_ask_for_moved_keys(clean_redis_cluster: RedisCluster) -> None:
    cluster = clean_redis_cluster
    slot = cluster.slot_of("{tag}a")
    source = cluster.owner_of(slot)
    target = next(m for m in cluster.masters if m is not source)
    with source.client() as conn:
        conn.set("{tag}a", "1")
        conn.set("{tag}b", "2")
    migration = cluster.begin_slot_migration(slot, target)
    assert migration.move_keys(limit=1) == 1
    with source.client() as conn:
        remaining = conn.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        moved = ({"{tag}a", "{tag}b"} - set(remaining)).pop()
        assert conn.get(next(iter(remaining))) is not None  # not moved yet: served here
        with pytest.raises(redis.exceptions.AskError) as ask:
            conn.get(moved)
    assert (ask.value.slot_id, ask.value.port) == (slot, target.port)
    migration.finish()
    assert cluster.owner_of(slot) is target


def test_killed_master_is_replaced_and_rejoins_as_replica(
    clean_redis_cluster: RedisCluster,
) -> None:
    cluster = clean_redis_cluster
    victim = cluster.masters[0]
    cluster.kill(victim)

    def replica_promoted() -> bool:
        return victim not in cluster.masters and len(cluster.masters) == 3

    wait_until(
        replica_promoted, timeout=60, what="a replica to take over", errors=(redis.RedisError,)
    )
    cluster.heal(timeout=60)
    assert cluster.is_healthy()
    assert victim in cluster.replicas
