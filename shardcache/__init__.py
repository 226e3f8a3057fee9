"""shardcache: caches and small versioned records on sharded Redis and memcached.

The framework-agnostic core. Django and Flask adapters live in ``shardcache_django`` and
``shardcache_flask``; real local servers for tests and demos in `shardcache.testing`.
"""

from shardcache.cache import Cache
from shardcache.errors import (
    BinaryNotFoundError,
    CommandError,
    ConfigurationError,
    InvalidKeyError,
    LocalServerError,
    MissingKeyError,
    PortInUseError,
    SerializationError,
    ServerNotReadyError,
    ShardcacheError,
    ShardError,
    ShardUnavailableError,
)
from shardcache.topologies import HashPool

__version__ = "0.1.0"

__all__ = [
    "BinaryNotFoundError",
    "Cache",
    "CommandError",
    "ConfigurationError",
    "HashPool",
    "InvalidKeyError",
    "LocalServerError",
    "MissingKeyError",
    "PortInUseError",
    "SerializationError",
    "ServerNotReadyError",
    "ShardError",
    "ShardUnavailableError",
    "ShardcacheError",
    "__version__",
]
