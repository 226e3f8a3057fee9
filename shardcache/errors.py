"""The shardcache exception tree.

Every error shardcache raises on purpose derives from ``ShardcacheError``, so callers can
catch the library's failures in one clause without catching unrelated bugs::

    ShardcacheError
    ├── ConfigurationError        a setting is missing, malformed or contradictory
    ├── ClosedError               the topology was closed: it makes no new connections
    ├── InvalidKeyError           a key is not str/bytes, or is empty (also a ValueError)
    ├── MissingKeyError           incr/decr of a key that does not exist (also a ValueError)
    ├── NotAnIntegerError         incr/decr of a value that is not an integer (also a TypeError)
    ├── OutOfRangeError           a server refused a counter's delta (also a ValueError)
    ├── SerializationError        a value cannot be encoded, or stored bytes cannot be decoded
    ├── ShardError                a server-side problem on one shard (names the shard and key)
    │   ├── ShardUnavailableError the shard cannot be reached: refused, timed out, pool exhausted
    │   │   ├── RedirectsExhaustedError  a cluster kept redirecting (MOVED/ASK/TRYAGAIN) too long
    │   │   └── SentinelError     no sentinel answers, or none knows the master name
    │   └── CommandError          the shard answered with an error (WRONGTYPE, not an integer...)
    ├── LockError                 a lock could not be acquired, or was released while not held
    │   └── LockNotOwnedError     the lock expired or another holder took it
    ├── CrossSlotError            keys given together span several cluster slots
    ├── RecordError               the record store refused a call
    │   ├── RecordNotFound        no current record of that type and id (also a LookupError)
    │   ├── InvalidServerVersion  the store was reset since the caller's cursor: sync_latest again
    │   ├── InvalidRecordVersion  the cursor is older than the retained change log
    │   ├── InvalidRecordError    a record, filter or option is malformed (also a ValueError)
    │   └── LeaseError            a lease call is malformed (empty name or holder, bad ttl)
    └── LocalServerError          shardcache.testing could not run a local server
        ├── BinaryNotFoundError   the server program is not installed
        ├── PortInUseError        the chosen port was taken before the server bound it
        └── ServerNotReadyError   a server or topology did not become ready in time

Builtin names such as ``ConnectionError`` and ``TimeoutError`` are never reused.
"""

from __future__ import annotations

import hashlib
import os
import pickle

import redis.exceptions

__all__ = [
    "BinaryNotFoundError",
    "ClosedError",
    "CommandError",
    "ConfigurationError",
    "CrossSlotError",
    "InvalidKeyError",
    "InvalidRecordError",
    "InvalidRecordVersion",
    "InvalidServerVersion",
    "LeaseError",
    "LocalServerError",
    "LockError",
    "LockNotOwnedError",
    "MissingKeyError",
    "NotAnIntegerError",
    "OutOfRangeError",
    "PortInUseError",
    "RecordError",
    "RecordNotFound",
    "RedirectsExhaustedError",
    "SentinelError",
    "SerializationError",
    "ServerNotReadyError",
    "ShardError",
    "ShardUnavailableError",
    "ShardcacheError",
]


# Keys can be secrets (Django's session keys are session ids): errors and logs show them
# shortened unless this is set, e.g. by SHARDCACHE_SHOW_KEYS=1 while debugging.
SHOW_WHOLE_KEYS = os.environ.get("SHARDCACHE_SHOW_KEYS", "") not in ("", "0")
_SHOWN = 16


def key_text(key: bytes | str | object) -> str:
    """``key`` for an error message or a log line: up to 16 bytes as they are, then its
    length and a short digest (the same key always gives the same text)."""
    data = key.encode(errors="replace") if isinstance(key, str) else key
    if not isinstance(data, bytes):
        return f"<{type(key).__name__}>"
    if SHOW_WHOLE_KEYS or len(data) <= _SHOWN:
        return repr(data)
    digest = hashlib.sha256(data).hexdigest()[:8]
    return f"{data[:_SHOWN]!r}... ({len(data)} bytes, #{digest})"


def text_of(value: object) -> str:
    """A server's reply as text: bytes decoded as UTF-8, anything else through ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


class ShardcacheError(Exception):
    """Root of every error shardcache raises."""


class ConfigurationError(ShardcacheError):
    """A setting is missing, malformed or contradictory."""


class ClosedError(ShardcacheError):
    """The topology (or the client under it) was closed: it opens no connection and starts
    no thread again. Build a new one, or let the registry build one (`shardcache.registry`)."""


class InvalidKeyError(ShardcacheError, ValueError):
    """A key is not ``str`` or ``bytes``, or is empty."""


class MissingKeyError(ShardcacheError, ValueError):
    """``incr``/``decr`` of a key that does not exist (Django raises ``ValueError`` too)."""


class NotAnIntegerError(ShardcacheError, TypeError):
    """``incr``/``decr`` of a value that is not an integer (Django expects a TypeError)."""


class OutOfRangeError(ShardcacheError, ValueError):
    """A server refused a counter's delta. (Integers past the servers' 64-bit counters are
    no longer refused: `Cache.incr` adds them in Python and swaps the result in.)"""


class SerializationError(ShardcacheError, pickle.PickleError):
    """A value cannot be serialized, or stored bytes cannot be decoded (corrupt, unsigned,
    tampered, too large, or written by an unknown serializer). Also a ``pickle.PickleError``,
    which is what Django expects from ``set`` of a value that cannot be pickled."""


class ShardError(ShardcacheError):
    """A problem on one shard; ``shard`` names it and ``key`` is the key involved, if any.

    ``sentinel_err`` is True only for `SentinelError`: the problem is with the sentinels
    (the Go sentinel client's ``ClientError.SentinelErr``), not with a Redis server.
    """

    sentinel_err = False

    def __init__(self, message: str, *, shard: str = "", key: bytes | str | None = None) -> None:
        where = f" on shard {shard}" if shard else ""
        what = f" (key {key_text(key)})" if key is not None else ""
        super().__init__(f"{message}{where}{what}")
        self.shard = shard
        self.key = key


class ShardUnavailableError(ShardError, redis.exceptions.ConnectionError):
    """The shard cannot be reached: connection refused or reset, timeout, pool exhausted.

    Also a ``redis.exceptions.ConnectionError``, so code written for redis-py and
    django-redis (``except redis.exceptions.ConnectionError``) still sees outages.

    ``sent`` is False when the command certainly never reached the server (the connection
    could not be made), so retrying it elsewhere cannot apply it twice.
    """

    def __init__(
        self,
        message: str,
        *,
        shard: str = "",
        key: bytes | str | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(message, shard=shard, key=key)
        self.sent = sent


class CommandError(ShardError):
    """The shard answered with an error reply (WRONGTYPE, value is not an integer, ...);
    ``reply`` is redis-py's exception for it (``MovedError``, ``TryAgainError``...)."""

    def __init__(
        self,
        message: str,
        *,
        shard: str = "",
        key: bytes | str | None = None,
        reply: Exception | None = None,
    ) -> None:
        super().__init__(message, shard=shard, key=key)
        self.reply = reply


class RedirectsExhaustedError(ShardUnavailableError):
    """A cluster command was still redirected (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) when the
    redirect budget ran out. The slot has no node that serves it for now, so this is a
    `ShardUnavailableError` (``ignore_errors`` turns it into a miss); ``sent`` is False, as
    no node ran the command."""

    def __init__(self, message: str, *, shard: str = "", key: bytes | str | None = None) -> None:
        super().__init__(message, shard=shard, key=key, sent=False)


class SentinelError(ShardUnavailableError):
    """The sentinels cannot say who the master is: none reachable, or the name is unknown.
    No master, no shard: a `ShardUnavailableError` (``ignore_errors`` makes it a miss), and
    ``sent`` is False, as nothing reached a Redis server."""

    sentinel_err = True

    def __init__(self, message: str, *, shard: str = "", key: bytes | str | None = None) -> None:
        super().__init__(message, shard=shard, key=key, sent=False)


class LockError(ShardcacheError):
    """A `Cache.lock` could not be acquired (as a ``with`` block), or was released or
    extended while not held."""


class LockNotOwnedError(LockError):
    """The lock expired, or another holder took it: this holder's token is gone."""


class CrossSlotError(ShardcacheError, ValueError):
    """Keys that must go to one cluster node together (`Cluster.bind`) span several slots."""


class RecordError(ShardcacheError):
    """The record store refused a call."""


class RecordNotFound(RecordError, LookupError):
    """No current record of that type and id."""


class InvalidServerVersion(RecordError):
    """The store was reset (`clear`) since the caller's cursor was taken: call sync_latest."""


class InvalidRecordVersion(RecordError):
    """The cursor is older than the retained change log: changes after it are gone."""


class InvalidRecordError(RecordError, ValueError):
    """A record, a filter or an option is malformed."""


class LeaseError(RecordError, ValueError):
    """A lease call is malformed."""


class LocalServerError(ShardcacheError):
    """``shardcache.testing`` could not start, reach or stop a local server."""


class BinaryNotFoundError(LocalServerError):
    """A server program (redis-server, redis-sentinel, memcached) is not on the PATH."""


class PortInUseError(LocalServerError):
    """Another process bound the port between our check and the server's start."""


class ServerNotReadyError(LocalServerError):
    """A server or a whole topology did not become ready before its deadline."""
