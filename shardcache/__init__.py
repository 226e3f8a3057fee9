"""shardcache: caches and small versioned records on sharded Redis and memcached.

The framework-agnostic core. Django and Flask adapters live in ``shardcache_django`` and
``shardcache_flask``; real local servers for tests and demos in `shardcache.testing`.
"""

from shardcache.errors import (
    BinaryNotFoundError,
    ConfigurationError,
    LocalServerError,
    PortInUseError,
    ServerNotReadyError,
    ShardcacheError,
)

__version__ = "0.1.0"

__all__ = [
    "BinaryNotFoundError",
    "ConfigurationError",
    "LocalServerError",
    "PortInUseError",
    "ServerNotReadyError",
    "ShardcacheError",
    "__version__",
]
