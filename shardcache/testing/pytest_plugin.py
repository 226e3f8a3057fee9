"""pytest fixtures for real local servers (registered as the ``shardcache`` pytest11 plugin).

Session-scoped, started lazily (only when a test asks for them) and always stopped:

- ``redis_pool_servers``: 3 standalone redis-servers (`StandaloneRedis`)
- ``redis_cluster``: 3 masters + 3 replicas (`RedisCluster`)
- ``redis_sentinel``: ``bucket0`` and ``bucket1`` with a replica each, 3 sentinels (`RedisSentinel`)
- ``memcached_servers``: 3 memcacheds (`MemcachedServers`)

Function-scoped ``clean_<name>`` twins hand the same topology over after restarting anything a
previous test killed, waiting until it is ready, and deleting every key. How long each
topology took to start is printed in the terminal summary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from shardcache.testing._base import Topology
from shardcache.testing.cluster import RedisCluster
from shardcache.testing.sentinel import RedisSentinel
from shardcache.testing.standalone import MemcachedServers, StandaloneRedis

__all__ = [
    "clean_memcached_servers",
    "clean_redis_cluster",
    "clean_redis_pool_servers",
    "clean_redis_sentinel",
    "memcached_servers",
    "redis_cluster",
    "redis_pool_servers",
    "redis_sentinel",
    "shardcache_report",
]

T = TypeVar("T", bound=Topology)

_REPORT_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_REPORT_KEY] = []


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    lines = config.stash.get(_REPORT_KEY, [])
    if lines:
        terminalreporter.section("shardcache local servers")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def shardcache_report(pytestconfig: pytest.Config) -> Callable[[str], None]:
    """Add a line to the "shardcache local servers" section of the terminal summary."""
    return pytestconfig.stash[_REPORT_KEY].append


def _session_topology(
    name: str, make: Callable[[], T], report: Callable[[str], None]
) -> Iterator[T]:
    topology = make()
    with topology:
        report(
            f"{name}: {len(topology.processes)} processes ready in {topology.startup_seconds:.2f}s"
        )
        yield topology


def _clean(topology: T) -> T:
    topology.heal()
    topology.flush()
    return topology


@pytest.fixture(scope="session")
def redis_pool_servers(shardcache_report: Callable[[str], None]) -> Iterator[StandaloneRedis]:
    """3 standalone redis-servers for the whole session."""
    yield from _session_topology("redis_pool_servers", StandaloneRedis, shardcache_report)


@pytest.fixture(scope="session")
def redis_cluster(shardcache_report: Callable[[str], None]) -> Iterator[RedisCluster]:
    """A 3 masters + 3 replicas Redis Cluster for the whole session."""
    yield from _session_topology("redis_cluster", RedisCluster, shardcache_report)


@pytest.fixture(scope="session")
def redis_sentinel(shardcache_report: Callable[[str], None]) -> Iterator[RedisSentinel]:
    """``bucket0`` and ``bucket1`` (a replica each) watched by 3 sentinels, for the session."""
    yield from _session_topology("redis_sentinel", RedisSentinel, shardcache_report)


@pytest.fixture(scope="session")
def memcached_servers(shardcache_report: Callable[[str], None]) -> Iterator[MemcachedServers]:
    """3 memcacheds for the whole session."""
    yield from _session_topology("memcached_servers", MemcachedServers, shardcache_report)


@pytest.fixture
def clean_redis_pool_servers(redis_pool_servers: StandaloneRedis) -> StandaloneRedis:
    """`redis_pool_servers`, all running and empty."""
    return _clean(redis_pool_servers)


@pytest.fixture
def clean_redis_cluster(redis_cluster: RedisCluster) -> RedisCluster:
    """`redis_cluster`, healthy (every node up, replicas attached) and empty."""
    return _clean(redis_cluster)


@pytest.fixture
def clean_redis_sentinel(redis_sentinel: RedisSentinel) -> RedisSentinel:
    """`redis_sentinel`, settled (sentinels agree, replicas attached) and empty."""
    return _clean(redis_sentinel)


@pytest.fixture
def clean_memcached_servers(memcached_servers: MemcachedServers) -> MemcachedServers:
    """`memcached_servers`, all running and empty."""
    return _clean(memcached_servers)
