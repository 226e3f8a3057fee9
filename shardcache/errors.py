"""The shardcache exception tree.

Every error shardcache raises on purpose derives from ``ShardcacheError``, so callers can
catch the library's failures in one clause without catching unrelated bugs::

    ShardcacheError
    ├── ConfigurationError        a setting is missing, malformed or contradictory
    └── LocalServerError          shardcache.testing could not run a local server
        ├── BinaryNotFoundError   the server program is not installed
        ├── PortInUseError        the chosen port was taken before the server bound it
        └── ServerNotReadyError   a server or topology did not become ready in time

Builtin names such as ``ConnectionError`` and ``TimeoutError`` are never reused.
"""

from __future__ import annotations

__all__ = [
    "BinaryNotFoundError",
    "ConfigurationError",
    "LocalServerError",
    "PortInUseError",
    "ServerNotReadyError",
    "ShardcacheError",
]


class ShardcacheError(Exception):
    """Root of every error shardcache raises."""


class ConfigurationError(ShardcacheError):
    """A setting is missing, malformed or contradictory."""


class LocalServerError(ShardcacheError):
    """``shardcache.testing`` could not start, reach or stop a local server."""


class BinaryNotFoundError(LocalServerError):
    """A server program (redis-server, redis-sentinel, memcached) is not on the PATH."""


class PortInUseError(LocalServerError):
    """Another process bound the port between our check and the server's start."""


class ServerNotReadyError(LocalServerError):
    """A server or a whole topology did not become ready before its deadline."""
