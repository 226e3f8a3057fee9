"""The fault suite: real servers fail under a load of mixed calls, and each scenario reports
what callers saw (``tests/faults/README.md`` holds the table of the last run).

Run it alone with ``./dev test -m faults``; ``SHARDCACHE_FAULTS_REPORT=tests/faults/README.md``
rewrites the table there. Every wait is on a condition with a generous deadline; the
asserts are the properties the README promises, never a timing on a busy machine except
where a timeout itself is the promise.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from shardcache import (
    Cache,
    Cluster,
    HashPool,
    MemcachedState,
    SentinelClient,
    ShardUnavailableError,
)
from shardcache.registry import Registry
from shardcache.testing import (
    MemcachedServers,
    RedisCluster,
    RedisSentinel,
    StandaloneRedis,
    pick_port,
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


# --- through Cache, and through the Django backend ---------------------------------------

_DJANGO = {
    "hashpool": "ShardedRedisCache",
    "cluster": "RedisClusterCache",
    "sentinel": "RedisSentinelCache",
    "memcache": "ShardedMemcacheCache",
}


@pytest.fixture(params=["Cache", "Django"])
def api(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def _loaded(
    api: str, kind: str, location: list[str], options: dict[str, Any], registry: Registry
) -> Iterator[tuple[Load, Cache, Callable[[str], bytes]]]:
    """A load through ``api``, the core `Cache` under it, and the stored key of a load key."""
    if api == "Cache":
        cache = registry.cache(kind, location, options, prefix="t:")
        yield Load(cache, threads=4), cache, cache.make_key
        return
    from django.core.cache import caches
    from django.test import override_settings

    entry = {
        "BACKEND": f"shardcache_django.cache.{_DJANGO[kind]}",
        "LOCATION": location,
        "OPTIONS": options,
    }
    with override_settings(CACHES={"default": entry}):
        backend = caches["default"]
        core = backend.core

        def stored(key: str) -> bytes:
            return core.make_key(backend.make_and_validate_key(key))

        blind = bool(options.get("IGNORE_ERRORS"))
        yield Load(backend, threads=4, django=True, blind_writes=blind), core, stored


# --- Redis shard paused ------------------------------------------------------------------


def test_a_paused_redis_shard_costs_one_timeout_then_fails_fast(
    clean_redis_pool_servers: StandaloneRedis, registry: Registry, api: str
) -> None:
    options = {"SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 1}
    with _loaded(api, "hashpool", clean_redis_pool_servers.urls, options, registry) as (
        load,
        cache,
        stored,
    ):
        pool = cache.topology
        assert isinstance(pool, HashPool)
        sick = pool.shards()[0]
        load.shard_of = lambda key: pool.shard_for(stored(key)).id
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
        row = load.row(f"Redis shard paused 3 s (SOCKET_TIMEOUT=1), through {api}", fault)
    sick_calls = [took for shard, took in during if shard == sick.id]
    others = [took for shard, took in during if shard != sick.id]
    row.p99_others_ms = _p99(others)
    slow = sum(1 for took in sick_calls if took > 0.5)
    fast = [took for took in sick_calls if took <= 0.5]
    row.note(
        f"{slow} calls to it waited out the timeout, {len(fast)} failed fast "
        f"(p99 {_p99(fast):.2f} ms, max {max(fast, default=0) * 1000:.2f} ms)"
    )
    ROWS.append(row)
    assert (row.hung, row.lost, row.stale) == (0, 0, 0)
    assert row.longest_stall < 2.5  # one socket timeout, never the 3 s pause
    assert slow <= load.threads  # about one timeout per thread, then the breaker
    assert len(sick_calls) > 10 * slow  # the rest failed fast


# --- servers down at start --------------------------------------------------------------

_DEAD: dict[str, tuple[str, dict[str, Any]]] = {
    "hashpool": ("redis://127.0.0.1:{port}/0", {}),
    "cluster": ("127.0.0.1:{port}", {}),
    "sentinel": ("127.0.0.1:{port}", {"MASTERS": ["bucket0"]}),
    "memcache": ("127.0.0.1:{port}", {}),
}


@pytest.mark.parametrize("kind", list(_DEAD))
def test_servers_down_at_start_are_misses_with_ignore_errors(
    kind: str, registry: Registry, api: str
) -> None:
    address, options = _DEAD[kind]
    location = [address.format(port=pick_port())]  # nothing listens there
    options = {**options, "IGNORE_ERRORS": True, "CONNECT_TIMEOUT": 0.5, "RETRY_TIMEOUT": 1}
    with _loaded(api, kind, location, options, registry) as (load, _, _):
        started = time.monotonic()
        with load.running(acked=False):
            load.settle(1.5)
        row = load.row(
            f"{kind} servers down at start (ignore_errors), through {api}",
            started,
            count_lost=False,
        )
    ROWS.append(row)
    assert (row.errors, row.stale, row.hung) == (0, 0, 0)
    assert row.misses > 0
    assert not load.acked


# --- memcached shard killed --------------------------------------------------------------


def test_a_killed_memcached_shard_misses_then_warms_up_and_serves_again(
    clean_memcached_servers: MemcachedServers, registry: Registry, api: str
) -> None:
    servers = clean_memcached_servers
    options = {"IGNORE_ERRORS": True, "RETRY_TIMEOUT": 1}
    victim = servers.servers[1]
    first, _, last = servers.addresses
    with _loaded(api, "memcache", servers.addresses, options, registry) as (load, cache, _):
        with load.running():
            load.settle(0.5)
            fault = time.monotonic()
            victim.kill()
            load.settle(1.0)
            cache.update_shard_states(
                [first, ShardState(victim.address, MemcachedState.DOWN), last]
            )
            load.settle(0.5)
            victim.restart()
            restarted = time.monotonic()
            warming = ShardState(victim.address, MemcachedState.WARM_UP)
            cache.update_shard_states([first, warming, last])
            load.settle(0.5)
            cache.update_shard_states(servers.addresses)
            key = _key_on(cache, 1)
            wait_until(lambda: _stores(cache, key), timeout=15, what="served")
            served_after = time.monotonic() - restarted
            load.settle(0.5)
        scenario = f"memcached shard killed, DOWN, restarted, WARM_UP -> ACTIVE, through {api}"
        row = load.row(scenario, fault, count_lost=False)  # a restarted memcached is empty
    row.note(f"served again {served_after:.2f}s after its restart (ignore_errors)")
    ROWS.append(row)
    assert (row.errors, row.stale, row.hung) == (0, 0, 0)
    assert served_after < 1 + 1 + 5  # retry_timeout + 1 s, with room for a busy machine


def test_a_killed_memcached_shard_errs_only_for_its_own_keys(
    clean_memcached_servers: MemcachedServers, registry: Registry
) -> None:
    # Without ignore_errors: the callers of the dead shard's keys get a typed error, nobody
    # else does (get_many, which spans every shard, is counted apart).
    servers = clean_memcached_servers
    victim = servers.servers[1]
    cache = registry.cache("memcache", servers.addresses, {"RETRY_TIMEOUT": 1}, prefix="t:")
    load = Load(cache, threads=4)
    load.shard_of = lambda key: str(_shard_index(cache, key))
    key = _key_on(cache, 1)
    with load.running():
        load.settle(0.5)
        fault = time.monotonic()
        victim.kill()
        load.settle(2.0)
        victim.restart()
        restarted = time.monotonic()
        wait_until(lambda: _stores(cache, key), timeout=15, what="served")
        served_after = time.monotonic() - restarted
        load.settle(0.5)
    row = load.row(
        "memcached shard killed and restarted, no ignore_errors, through Cache",
        fault,
        count_lost=False,
    )  # a restarted memcached is empty
    failed = load.failed_on
    others = sum(count for shard, count in failed.items() if shard not in ("1", "*"))
    row.note(
        f"errors: {failed.get('1', 0)} on its keys, {others} on other shards' keys, "
        f"{failed.get('*', 0)} get_many over every shard; served again {served_after:.2f}s "
        "after its restart"
    )
    ROWS.append(row)
    assert (row.stale, row.hung) == (0, 0)
    assert failed.get("1", 0) > 0  # its own callers were told
    assert others == 0
    assert served_after < 1 + 1 + 5  # retry_timeout + 1 s, with room for a busy machine


def _stores(cache: Cache, key: str) -> bool:
    """Whether ``key``'s shard takes a write and serves it back (not yet, if it errs)."""
    try:
        return cache.set(key, 1) and cache.get(key) == 1
    except ShardUnavailableError:
        return False


def test_a_paused_memcached_shard_costs_one_timeout_then_misses(
    clean_memcached_servers: MemcachedServers, registry: Registry, api: str
) -> None:
    servers = clean_memcached_servers
    options = {"IGNORE_ERRORS": True, "SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 1}
    victim = servers.servers[1]
    with _loaded(api, "memcache", servers.addresses, options, registry) as (load, cache, _):
        key = _key_on(cache, 1)
        with load.running():
            load.settle(0.5)
            fault = time.monotonic()
            victim.pause()
            time.sleep(3.0)
            victim.resume()
            wait_until(lambda: _stores(cache, key), timeout=15, what="served")
            load.settle(0.5)
        row = load.row(f"memcached shard paused 3 s (SOCKET_TIMEOUT=1), through {api}", fault)
    ROWS.append(row)
    assert (row.errors, row.stale, row.hung) == (0, 0, 0)  # ignore_errors: misses
    assert row.longest_stall < 2.5  # one socket timeout, never the 3 s pause


def _shard_index(cache: Cache, key: str) -> int | None:
    handle = cache.topology.client.manager.get_shard(cache.make_key(key))  # type: ignore[attr-defined]
    return None if handle is None else int(handle.index)


def _key_on(cache: Cache, index: int) -> str:
    """A key of memcache shard ``index``."""
    return next(f"k{i}" for i in range(1000) if _shard_index(cache, f"k{i}") == index)


# --- Redis Sentinel ----------------------------------------------------------------------


def _sentinels(setup: RedisSentinel) -> list[str]:
    return [f"127.0.0.1:{port}" for _, port in setup.sentinel_addresses]


def _subscribed(cache: Cache) -> SentinelClient:
    # As in production, where a client has been up for more than a moment when a failover
    # comes: its watchers hear the sentinels' events.
    client = cache.topology
    assert isinstance(client, SentinelClient)
    wait_until(lambda: len(client.watching) == 3, timeout=15, what="the watchers")
    return client


def test_a_planned_sentinel_failover_loses_nothing(
    clean_redis_sentinel: RedisSentinel, registry: Registry, api: str
) -> None:
    options = {"MASTERS": ["bucket0"]}
    with _loaded(api, "sentinel", _sentinels(clean_redis_sentinel), options, registry) as (
        load,
        cache,
        _,
    ):
        client = _subscribed(cache)
        with load.running():
            load.settle(0.5)
            fault = time.monotonic()
            # settle: the old master has rejoined as a replica before the next scenario
            new = clean_redis_sentinel.failover("bucket0")
            wait_until(
                lambda: client.masters_now()["bucket0"] == f"{new[0]}:{new[1]}",
                timeout=30,
                what="the switch",
            )
            load.settle(1.0)
        row = load.row(f"Sentinel planned failover, through {api}", fault)
    ROWS.append(row)
    assert (row.lost, row.stale, row.hung) == (0, 0, 0)


def test_a_killed_sentinel_master_loses_no_acknowledged_write(
    clean_redis_sentinel: RedisSentinel, registry: Registry, api: str
) -> None:
    old = clean_redis_sentinel.master_address("bucket0")
    options = {"MASTERS": ["bucket0"]}
    with _loaded(api, "sentinel", _sentinels(clean_redis_sentinel), options, registry) as (
        load,
        cache,
        _,
    ):
        _subscribed(cache)
        _kill_a_master(
            f"Sentinel master killed, through {api}",
            load,
            clean_redis_sentinel.master("bucket0"),
            clean_redis_sentinel.kill,
            lambda: clean_redis_sentinel.master_address("bucket0") != old,
        )


def test_one_sentinel_of_three_killed_is_no_error(
    clean_redis_sentinel: RedisSentinel, registry: Registry
) -> None:
    options = {"MASTERS": ["bucket0"]}
    with _loaded("Cache", "sentinel", _sentinels(clean_redis_sentinel), options, registry) as (
        load,
        _,
        _,
    ):
        with load.running():
            load.settle(0.5)
            fault = time.monotonic()
            clean_redis_sentinel.kill(clean_redis_sentinel.sentinels[0])
            load.settle(1.5)
        row = load.row("one sentinel of three killed", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


# --- Redis Cluster -----------------------------------------------------------------------


@contextlib.contextmanager
def _hot_slot(setup: RedisCluster, registry: Registry, api: str) -> Iterator[tuple[Load, int]]:
    """A load on the cluster through ``api``, and the slot of one of its keys."""
    location = [setup.nodes[0].address]
    with _loaded(api, "cluster", location, {}, registry) as (load, cache, stored):
        cluster = cache.topology
        assert isinstance(cluster, Cluster)
        yield load, cluster.slot(stored("t0:1"))


def test_cluster_failover_is_no_caller_error(
    clean_redis_cluster: RedisCluster, registry: Registry, api: str
) -> None:
    with _hot_slot(clean_redis_cluster, registry, api) as (load, slot):
        with load.running():
            load.settle(0.5)
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
        row = load.row(f"CLUSTER FAILOVER (manual, coordinated), through {api}", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


@pytest.mark.parametrize("source_first", [False, True], ids=["target-first", "source-first"])
def test_a_live_reshard_is_no_caller_error(
    clean_redis_cluster: RedisCluster, registry: Registry, source_first: bool, api: str
) -> None:
    with _hot_slot(clean_redis_cluster, registry, api) as (load, slot):
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
        row = load.row(f"live reshard of a hot slot, SETSLOT {order}, through {api}", fault)
    ROWS.append(row)
    assert (row.errors, row.lost, row.stale, row.hung) == (0, 0, 0, 0)


def test_a_killed_cluster_master_errs_only_until_its_replica_is_promoted(
    clean_redis_cluster: RedisCluster, registry: Registry, api: str
) -> None:
    with _hot_slot(clean_redis_cluster, registry, api) as (load, slot):
        victim = clean_redis_cluster.owner_of(slot)
        _kill_a_master(
            f"Cluster master killed, through {api}",
            load,
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
    after = len(load.errors) - errors_then
    row.note(f"promoted {took:.1f}s after the kill; {after} errors after the promotion")
    ROWS.append(row)
    assert (row.stale, row.hung) == (0, 0)
    assert len(load.errors) <= errors_then + load.threads  # at most a call each after
    assert row.lost <= load.threads
