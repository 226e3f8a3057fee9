"""Where the example apps find their servers.

In this order: environment variables; else the state file that ``python -m shardcache.testing
up`` (``./dev up``) writes; else the defaults below, the usual local ports.

    SHARDCACHE_REDIS_URLS        redis://127.0.0.1:6379/0        (ShardedRedisCache, "pool")
    SHARDCACHE_CLUSTER_NODES     127.0.0.1:7000,127.0.0.1:7001   (RedisClusterCache, "default")
    SHARDCACHE_SENTINELS         127.0.0.1:26379                 (RedisSentinelCache, "sessions")
    SHARDCACHE_SENTINEL_MASTERS  mymaster
    SHARDCACHE_MEMCACHED         127.0.0.1:11211                 (ShardedMemcacheCache, "memcache")

Each takes a comma-separated list.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Servers", "servers"]

DEFAULTS = {
    "SHARDCACHE_REDIS_URLS": "redis://127.0.0.1:6379/0",
    "SHARDCACHE_CLUSTER_NODES": "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002",
    "SHARDCACHE_SENTINELS": "127.0.0.1:26379",
    "SHARDCACHE_SENTINEL_MASTERS": "mymaster",
    "SHARDCACHE_MEMCACHED": "127.0.0.1:11211",
}


@dataclass(frozen=True)
class Servers:
    redis_urls: list[str]
    cluster_nodes: list[str]
    sentinels: list[str]
    sentinel_masters: list[str]
    memcached: list[str]

    def environment(self) -> dict[str, str]:
        """These servers as the environment variables above (for a child process)."""
        return {
            "SHARDCACHE_REDIS_URLS": ",".join(self.redis_urls),
            "SHARDCACHE_CLUSTER_NODES": ",".join(self.cluster_nodes),
            "SHARDCACHE_SENTINELS": ",".join(self.sentinels),
            "SHARDCACHE_SENTINEL_MASTERS": ",".join(self.sentinel_masters),
            "SHARDCACHE_MEMCACHED": ",".join(self.memcached),
        }

    @classmethod
    def of_local(cls, local: Any) -> Servers:
        """The servers of a running `shardcache.testing.LocalTopology`."""
        sentinel = local.sentinel.describe()
        return cls(
            redis_urls=local.standalone.urls,
            cluster_nodes=local.cluster.describe()["startup_nodes"],
            sentinels=sentinel["sentinels"],
            sentinel_masters=sentinel["names"],
            memcached=local.memcached.addresses,
        )


def _from_state_file() -> dict[str, str]:
    from shardcache.testing.cli import default_state_path
    from shardcache.testing.local import LocalTopology

    path = Path(default_state_path())
    if not path.exists():
        return {}
    local = LocalTopology.from_state(json.loads(path.read_text()))
    try:
        return Servers.of_local(local).environment()
    except KeyError:  # a state file of only some parts
        return {}


def servers() -> Servers:
    found = {**DEFAULTS, **_from_state_file()}
    found.update({name: os.environ[name] for name in DEFAULTS if os.environ.get(name)})

    def listed(name: str) -> list[str]:
        return [item.strip() for item in found[name].split(",") if item.strip()]

    return Servers(
        redis_urls=listed("SHARDCACHE_REDIS_URLS"),
        cluster_nodes=listed("SHARDCACHE_CLUSTER_NODES"),
        sentinels=listed("SHARDCACHE_SENTINELS"),
        sentinel_masters=listed("SHARDCACHE_SENTINEL_MASTERS"),
        memcached=listed("SHARDCACHE_MEMCACHED"),
    )
