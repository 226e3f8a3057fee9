"""The fault suite: real servers fail under a load of mixed calls, and each scenario reports
what callers saw (``tests/faults/README.md`` holds the table of the last run).

Run it alone with ``./dev test -m faults``; ``SHARDCACHE_FAULTS_REPORT=tests/faults/README.md``
rewrites the table there. Every wait is on a condition with a generous deadline; the
asserts are the properties the README promises, never a timing on a busy machine except
where a timeout itself is the promise.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from shardcache import Cache, Cluster, HashPool, MemcachedState, SentinelClient
from shardcache.registry import Registry
from shardcache.testing import (
    MemcachedServers,
    RedisCluster,
    RedisSentinel,
    StandaloneRedis,
    wait_until,
)
from shardcache.testing.servers import RedisServer
from shardcache.topologies.memcache import ShardState
from tests.faults.load import HEADER, Load, Row

pytestmark = pytest.mark.faults

ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def _table(shardcache_report: Callable[[str], None]) -> Iterator[None]:
    yield
    table = "\n".join([HEADER, *(row.markdown() for row in ROWS)])
    for row in ROWS:
        shardcache_report(f"fault: {row.markdown()}")
    target = os.environ.get("SHARDCACHE_FAULTS_REPORT")
    if target:
        path = Path(target)
        text = path.read_text() if path.exists() else ""
        head = text.split("<!-- table -->")[0] if "<!-- table -->" in text else text
        path.write_text(f"{head}<!-- table -->\n{table}\n")


@pytest.fixture
def registry() -> Iterator[Registry]:
    registry = Registry()
    yield registry
    registry.close()


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000 if len(values) > 100 else 0.0


# --- Redis shard paused ------------------------------------------------------------------


def test_a_paused_redis_shard_costs_one_timeout_then_fails_fast(
    clean_redis_pool_servers: StandaloneRedis, registry: Registry
) -> None:
    options = {"SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 1}
    cache = registry.cache("hashpool", clean_redis_pool_servers.urls, options, prefix="t:")
    pool = cache.topology
    assert isinstance(pool, HashPool)
    sick = pool.shards()[0]
    load = Load(cache, threads=4, shard_of=lambda key: pool.shard_for(cache.make_key(key)).id)
    server = next(s for s in clean_redis_pool_servers.servers if f":{s.port}/" in sick.id)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        load.durations.clear()
        server.pause()
        time.sleep(3.0)  # three times the socket timeout
        during = list(load.durations)
        server.resume()
        wait_until(lambda: not sick.breaker.is_open, timeout=15, what="the probe")
        load.settle(0.5)
    row = load.row("Redis shard paused 3 s (SOCKET_TIMEOUT=1)", fault)
    sick_calls = [took for shard, took in during if shard == sick.id]
    others = [took for shard, took in during if shard != sick.id]
    row.p99_others_ms = _p99(others)
    slow = sum(1 for took in sick_calls if took > 0.5)
    row.notes += (
        f"; {slow} calls to it waited out the timeout, {len(sick_calls) - slow} failed fast"
    )
    ROWS.append(row)
    assert (row.hung, row.lost, row.stale) == (0, 0, 0)
    assert row.longest_stall < 2.5  # one socket timeout, never the 3 s pause
    assert slow <= load.threads  # about one timeout per thread, then the breaker
    assert len(sick_calls) > 10 * slow  # the rest failed fast


# --- memcached shard killed --------------------------------------------------------------


def test_a_killed_memcached_shard_misses_then_warms_up_and_serves_again(
    clean_memcached_servers: MemcachedServers, registry: Registry
) -> None:
    servers = clean_memcached_servers
    options = {"IGNORE_ERRORS": True, "RETRY_TIMEOUT": 1}
    cache = registry.cache("memcache", servers.addresses, options, prefix="t:")
    victim = servers.servers[1]
    load = Load(cache, threads=4)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        victim.kill()
        load.settle(1.0)
        cache.update_shard_states(
            [
                servers.addresses[0],
                ShardState(victim.address, MemcachedState.DOWN),
                servers.addresses[2],
            ]
        )
        load.settle(0.5)
        victim.restart()
        restarted = time.monotonic()
        cache.update_shard_states(
            [
                servers.addresses[0],
                ShardState(victim.address, MemcachedState.WARM_UP),
                servers.addresses[2],
            ]
        )
        load.settle(0.5)
        cache.update_shard_states(servers.addresses)
        key = next(f"k{i}" for i in range(1000) if _on(cache, f"k{i}", 1))
        wait_until(lambda: cache.set(key, 1) and cache.get(key) == 1, timeout=15, what="served")
        served_after = time.monotonic() - restarted
        load.settle(0.5)
    scenario = "memcached shard killed, DOWN, restarted, WARM_UP -> ACTIVE"
    row = load.row(scenario, fault, count_lost=False)  # a restarted memcached is empty
    row.note(f"served again {served_after:.2f}s after its restart (ignore_errors)")
    ROWS.append(row)
    assert (row.errors, row.stale, row.hung) == (0, 0, 0)
    assert served_after < 1 + 1 + 5  # retry_timeout + 1 s, with room for a busy machine


def _on(cache: Cache, key: str, index: int) -> bool:
    handle = cache.topology.client.manager.get_shard(cache.make_key(key))  # type: ignore[attr-defined]
    return handle is not None and handle.index == index


# --- Redis Sentinel ----------------------------------------------------------------------


def _sentinel_cache(setup: RedisSentinel, registry: Registry) -> Cache:
    sentinels = [f"127.0.0.1:{port}" for _, port in setup.sentinel_addresses]
    return registry.cache("sentinel", sentinels, {"MASTERS": ["bucket0"]}, prefix="t:")


def test_a_planned_sentinel_failover_loses_nothing(
    clean_redis_sentinel: RedisSentinel, registry: Registry
) -> None:
    cache = _sentinel_cache(clean_redis_sentinel, registry)
    client = cache.topology
    assert isinstance(client, SentinelClient)
    load = Load(cache, threads=4)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        new = clean_redis_sentinel.failover("bucket0", settle=False)
        wait_until(
            lambda: client.masters_now()["bucket0"] == f"{new[0]}:{new[1]}",
            timeout=30,
            what="the switch",
        )
        load.settle(1.0)
    row = load.row("Sentinel planned failover", fault)
    ROWS.append(row)
    assert (row.lost, row.stale, row.hung) == (0, 0, 0)


def test_a_killed_sentinel_master_loses_no_acknowledged_write(
    clean_redis_sentinel: RedisSentinel, registry: Registry
) -> None:
    cache = _sentinel_cache(clean_redis_sentinel, registry)
    client = cache.topology
    assert isinstance(client, SentinelClient)
    old = clean_redis_sentinel.master_address("bucket0")
    _kill_a_master(
        "Sentinel master killed",
        Load(cache, threads=4),
        clean_redis_sentinel.master("bucket0"),
        clean_redis_sentinel.kill,
        lambda: clean_redis_sentinel.master_address("bucket0") != old,
    )


def test_one_sentinel_of_three_killed_is_no_error(
    clean_redis_sentinel: RedisSentinel, registry: Registry
) -> None:
    cache = _sentinel_cache(clean_redis_sentinel, registry)
    load = Load(cache, threads=4)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        clean_redis_sentinel.kill(clean_redis_sentinel.sentinels[0])
        load.settle(1.5)
    row = load.row("one sentinel of three killed", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


def test_a_planned_failover_through_the_django_backend(
    clean_redis_sentinel: RedisSentinel,
) -> None:
    from django.test import override_settings

    sentinels = [f"127.0.0.1:{port}" for _, port in clean_redis_sentinel.sentinel_addresses]
    entry = {
        "BACKEND": "shardcache_django.cache.RedisSentinelCache",
        "LOCATION": sentinels,
        "OPTIONS": {"MASTERS": ["bucket0"]},
    }
    with override_settings(CACHES={"default": entry}):
        from django.core.cache import caches

        load = Load(caches["default"], threads=4, django=True)
        with load.running():
            load.settle(0.5)
            fault = time.monotonic()
            clean_redis_sentinel.failover("bucket0", settle=False)
            load.settle(2.0)
        row = load.row("Sentinel planned failover, through Django's cache API", fault)
    ROWS.append(row)
    assert (row.lost, row.stale, row.hung) == (0, 0, 0)


# --- Redis Cluster -----------------------------------------------------------------------


def _cluster_cache(setup: RedisCluster, registry: Registry) -> Cache:
    return registry.cache("cluster", [setup.nodes[0].address], {}, prefix="t:")


def test_cluster_failover_is_no_caller_error(
    clean_redis_cluster: RedisCluster, registry: Registry
) -> None:
    cache = _cluster_cache(clean_redis_cluster, registry)
    cluster = cache.topology
    assert isinstance(cluster, Cluster)
    load = Load(cache, threads=4)
    with load.running():
        load.settle(0.5)
        slot = cluster.slot(cache.make_key("t0:1"))
        master = clean_redis_cluster.owner_of(slot)
        replica = next(
            node
            for node in clean_redis_cluster.replicas
            if node.info("replication").get("master_port") == master.port
        )
        fault = time.monotonic()
        with replica.client() as conn:
            conn.execute_command("CLUSTER", "FAILOVER")
        wait_until(
            lambda: clean_redis_cluster.owner_of(slot) is replica,
            timeout=30,
            what="the replica to take over",
            errors=(redis.RedisError,),
        )
        load.settle(1.0)
    row = load.row("CLUSTER FAILOVER (manual, coordinated)", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


@pytest.mark.parametrize("source_first", [False, True], ids=["target-first", "source-first"])
def test_a_live_reshard_is_no_caller_error(
    clean_redis_cluster: RedisCluster, registry: Registry, source_first: bool
) -> None:
    cache = _cluster_cache(clean_redis_cluster, registry)
    cluster = cache.topology
    assert isinstance(cluster, Cluster)
    load = Load(cache, threads=4)
    slot = cluster.slot(cache.make_key("t0:1"))
    source = clean_redis_cluster.owner_of(slot)
    target = next(m for m in clean_redis_cluster.masters if m is not source)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        migration = clean_redis_cluster.begin_slot_migration(slot, target)
        while migration.move_keys(limit=5):
            time.sleep(0.01)
        migration.finish(source_first=source_first, gap=0.3 if source_first else 0.0)
        load.settle(1.0)
    order = "source first, 0.3 s apart" if source_first else "target first"
    row = load.row(f"live reshard of a hot slot, SETSLOT {order}", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


def test_a_killed_cluster_master_errs_only_until_its_replica_is_promoted(
    clean_redis_cluster: RedisCluster, registry: Registry
) -> None:
    cache = _cluster_cache(clean_redis_cluster, registry)
    cluster = cache.topology
    assert isinstance(cluster, Cluster)
    slot = cluster.slot(cache.make_key("t0:1"))
    victim = clean_redis_cluster.owner_of(slot)
    _kill_a_master(
        "Cluster master killed",
        Load(cache, threads=4),
        victim,
        clean_redis_cluster.kill,
        lambda: clean_redis_cluster.owner_of(slot) is not victim,
    )


def _kill_a_master(
    scenario: str,
    load: Load,
    victim: RedisServer,
    kill: Callable[[RedisServer], None],
    promoted: Callable[[], bool],
) -> None:
    """Kill ``victim`` under ``load``: callers may err until a replica is promoted, and
    then at most once each; acknowledged writes survive (but those in flight at the kill:
    replication is asynchronous)."""
    with load.running():
        load.settle(0.5)
        with victim.client() as conn:
            conn.wait(1, 5000)  # what was acknowledged so far is on the replica too
        fault = time.monotonic()
        kill(victim)
        wait_until(promoted, timeout=60, what="the promotion", errors=(redis.RedisError,))
        took = time.monotonic() - fault
        errors_then = len(load.errors)
        load.settle(1.5)
    row = load.row(scenario, fault)
    row.note(f"promoted {took:.1f}s after the kill; errors only until then")
    ROWS.append(row)
    assert (row.stale, row.hung) == (0, 0)
    assert len(load.errors) <= errors_then + load.threads  # at most a call each after
    assert row.lost <= load.threads
