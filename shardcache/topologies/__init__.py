"""The topologies: which server holds a key, and how to talk to it."""

from shardcache.topologies.cluster import Binding, Cluster, ClusterNode
from shardcache.topologies.hashpool import HashPool
from shardcache.topologies.memcache import (
    Item,
    MemcachedState,
    MemcacheTopology,
    ShardedMemcacheClient,
    ShardState,
    StaticShardManager,
)
from shardcache.topologies.redirects import (
    Redirect,
    RedirectPolicy,
    is_ask,
    is_cross_slot,
    is_moved,
    is_tryagain,
    parse_redirect,
)
from shardcache.topologies.sentinel import SentinelClient, SentinelMaster

__all__ = [
    "Binding",
    "Cluster",
    "ClusterNode",
    "HashPool",
    "Item",
    "MemcacheTopology",
    "MemcachedState",
    "Redirect",
    "RedirectPolicy",
    "SentinelClient",
    "SentinelMaster",
    "ShardState",
    "ShardedMemcacheClient",
    "StaticShardManager",
    "is_ask",
    "is_cross_slot",
    "is_moved",
    "is_tryagain",
    "parse_redirect",
]
