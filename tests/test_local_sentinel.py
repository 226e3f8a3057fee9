"""shardcache.testing.RedisSentinel: two named masters, three sentinels, fast failover."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import redis
from redis.sentinel import Sentinel

from shardcache.testing import RedisSentinel, wait_until


def test_every_sentinel_reports_both_masters_with_replica_and_peers(
    clean_redis_sentinel: RedisSentinel,
) -> None:
    redis_sentinel = clean_redis_sentinel
    for sentinel in redis_sentinel.sentinels:
        with sentinel.client() as conn:
            masters = conn.sentinel_masters()
        assert set(masters) == {"bucket0", "bucket1"}
        for fields in masters.values():
            assert fields["quorum"] == 2
            assert fields["num-slaves"] == 1
            assert fields["num-other-sentinels"] == 2


def test_redis_py_sentinel_finds_masters_and_replicas(clean_redis_sentinel: RedisSentinel) -> None:
    sentinel = Sentinel(clean_redis_sentinel.sentinel_addresses, socket_timeout=2)
    for name in ("bucket0", "bucket1"):
        assert sentinel.discover_master(name) == clean_redis_sentinel.master_address(name)
        assert len(sentinel.discover_slaves(name)) == 1
        master = sentinel.master_for(name, decode_responses=True)
        master.set("hello", name)
        assert master.get("hello") == name


def test_failover_reports_a_new_master_within_15s(
    clean_redis_sentinel: RedisSentinel, shardcache_report: Callable[[str], None]
) -> None:
    setup = clean_redis_sentinel
    old = setup.master_address("bucket0")
    old_node = setup.master("bucket0")
    with old_node.client() as conn:
        conn.set("survives", "yes")
        assert conn.wait(1, 5000) == 1  # the replica has it before we fail over

    began = time.monotonic()
    new = setup.failover("bucket0", timeout=15, settle=False)  # raises past 15 s
    shardcache_report(
        f"sentinel failover: new bucket0 master reported in {time.monotonic() - began:.2f}s"
    )

    assert new != old
    for sentinel in setup.sentinels:
        with sentinel.client() as conn:
            host, port = conn.sentinel_get_master_addr_by_name("bucket0")
        assert (host, int(port)) == new
    new_node = setup.master("bucket0")
    assert new_node.info("replication")["role"] == "master"
    settled = functools.partial(setup.is_settled, "bucket0")
    wait_until(settled, timeout=60, what="the old master to rejoin", errors=(redis.RedisError,))
    assert old_node.info("replication")["role"] == "slave"
    with new_node.client() as conn:
        assert conn.get("survives") == "yes"
    assert setup.master_address("bucket1") != new  # the other master is untouched


def test_killed_master_fails_over_and_rejoins_as_replica(
    clean_redis_sentinel: RedisSentinel,
) -> None:
    setup = clean_redis_sentinel
    victim = setup.master("bucket1")
    old = setup.master_address("bucket1")
    setup.kill(victim)

    def moved() -> bool:
        return setup.master_address("bucket1") != old

    wait_until(
        moved, timeout=60, what="sentinel to promote the replica", errors=(redis.RedisError,)
    )
    setup.heal(timeout=60)
    assert setup.is_settled("bucket1")
    assert victim in setup.replicas("bucket1")
