"""Sharded memcache with shard states (after Dropbox's godropbox ``memcache`` package)."""

from shardcache.topologies.memcache.client import ShardedMemcacheClient
from shardcache.topologies.memcache.manager import (
    ShardHandle,
    ShardManager,
    ShardMapping,
    StaticShardManager,
    crc32_shard_func,
)
from shardcache.topologies.memcache.model import (
    NO_EXPIRATION_INCR,
    CountResponse,
    GetResponse,
    Item,
    MemcachedState,
    MutateResponse,
    ShardState,
    StatResponse,
    Status,
    VersionResponse,
    validate_key,
)
from shardcache.topologies.memcache.topology import MemcacheShard, MemcacheTopology

__all__ = [
    "NO_EXPIRATION_INCR",
    "CountResponse",
    "GetResponse",
    "Item",
    "MemcacheShard",
    "MemcacheTopology",
    "MemcachedState",
    "MutateResponse",
    "ShardHandle",
    "ShardManager",
    "ShardMapping",
    "ShardState",
    "ShardedMemcacheClient",
    "StatResponse",
    "StaticShardManager",
    "Status",
    "VersionResponse",
    "crc32_shard_func",
    "validate_key",
]
