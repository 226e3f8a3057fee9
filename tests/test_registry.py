"""`shardcache.registry`: one topology per process per connection settings."""

from __future__ import annotations

import threading

import pytest

from shardcache import ClosedError, ConfigurationError
from shardcache.registry import Registry
from shardcache.testing import StandaloneRedis


def test_codec_options_and_prefixes_share_a_topology_connection_options_do_not(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    registry = Registry()
    urls = clean_redis_pool_servers.urls
    plain = registry.cache("hashpool", urls, {})
    zstd = registry.cache("hashpool", urls, {"COMPRESSOR": "zstd"}, prefix="app:")
    assert registry.cache("hashpool", urls, {}) is plain
    assert registry.cache("hashpool", ",".join(urls), {}).topology is plain.topology  # spelled
    assert zstd is not plain
    assert zstd.topology is plain.topology is registry.topology("hashpool", urls, {})
    slower = registry.topology("hashpool", urls, {"SOCKET_TIMEOUT": 10})
    assert slower is not plain.topology
    assert len(registry.topologies()) == 2
    registry.close()
    assert plain.topology.closed
    assert slower.closed


def test_built_once_under_concurrency_and_again_after_close(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    registry = Registry()
    urls = clean_redis_pool_servers.urls
    start = threading.Barrier(16)
    seen = []

    def first_use() -> None:
        start.wait(10)
        seen.append(registry.cache("hashpool", urls, {"MAX_CONNECTIONS": 8}))

    threads = [threading.Thread(target=first_use) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len({id(cache) for cache in seen}) == 1
    cache = seen[0]
    cache.set("k", 1)
    cache.close()  # closes the shared topology
    with pytest.raises(ClosedError):
        cache.get("k")
    fresh = registry.cache("hashpool", urls, {"MAX_CONNECTIONS": 8})
    assert fresh is not cache
    assert fresh.get("k") == 1
    registry.close()


def test_a_bad_entry_names_each_problem() -> None:
    with pytest.raises(ConfigurationError, match=r"shardcache.E001.*shardcache.E004"):
        Registry().cache("hashpool", ["127.0.0.1:1"], {"SERIALISER": "json", "HASH": "md6"})
