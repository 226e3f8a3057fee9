"""shardcache: caches and small versioned records on sharded Redis and memcached.

The framework-agnostic core. Django and Flask adapters live in ``shardcache_django`` and
``shardcache_flask``; real local servers for tests and demos in `shardcache.testing`.
"""

from shardcache.cache import Cache
from shardcache.errors import (
    BinaryNotFoundError,
    CommandError,
    ConfigurationError,
    CrossSlotError,
    InvalidKeyError,
    LocalServerError,
    MissingKeyError,
    PortInUseError,
    RedirectsExhaustedError,
    SentinelError,
    SerializationError,
    ServerNotReadyError,
    ShardcacheError,
    ShardError,
    ShardUnavailableError,
)
from shardcache.topologies import (
    Binding,
    Cluster,
    ClusterNode,
    HashPool,
    Item,
    MemcachedState,
    Redirect,
    RedirectPolicy,
    SentinelClient,
    SentinelMaster,
    ShardedMemcacheClient,
    ShardState,
    StaticShardManager,
    is_ask,
    is_cross_slot,
    is_moved,
    is_tryagain,
    parse_redirect,
)

__version__ = "0.1.0"

__all__ = [
    "BinaryNotFoundError",
    "Binding",
    "Cache",
    "Cluster",
    "ClusterNode",
    "CommandError",
    "ConfigurationError",
    "CrossSlotError",
    "HashPool",
    "InvalidKeyError",
    "Item",
    "LocalServerError",
    "MemcachedState",
    "MissingKeyError",
    "PortInUseError",
    "Redirect",
    "RedirectPolicy",
    "RedirectsExhaustedError",
    "SentinelClient",
    "SentinelError",
    "SentinelMaster",
    "SerializationError",
    "ServerNotReadyError",
    "ShardError",
    "ShardState",
    "ShardUnavailableError",
    "ShardcacheError",
    "ShardedMemcacheClient",
    "StaticShardManager",
    "__version__",
    "is_ask",
    "is_cross_slot",
    "is_moved",
    "is_tryagain",
    "parse_redirect",
]
