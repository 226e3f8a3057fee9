"""How `Cache` speaks to Redis servers (`Dialect` in `shardcache.protocols`): command tuples,
and the Lua scripts some of them run, sent by SHA1 (EVALSHA), then whole (EVAL) when the
server does not know them yet. Memcache has its own dialect, beside its shard
(`shardcache.topologies.memcache.topology`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["EXTEND_LOCK", "INCR_EXISTING", "REDIS", "SWAP", "UNLOCK", "RedisDialect", "sha_of"]

Command = tuple[Any, ...]


def sha_of(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


# INCRBY only if the key exists, in one atomic step (INCRBY alone would create it at 0).
INCR_EXISTING = b"""
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""

# Replace the value only if it is still ARGV[1], keeping its time to live: the
# compare-and-set step of a signed counter's increment (the server cannot sign).
SWAP = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""

# Delete the lock only if it still holds our token.
UNLOCK = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Give our lock ARGV[2] more milliseconds (ARGV[3] == '1': exactly ARGV[2] from now).
EXTEND_LOCK = b"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
    return 0
end
if ARGV[3] == '1' then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('PEXPIRE', KEYS[1], left + tonumber(ARGV[2]))
"""

_SCRIPTS = {sha_of(script): script for script in (INCR_EXISTING, SWAP, UNLOCK, EXTEND_LOCK)}
_INCR_EXISTING_SHA, _SWAP_SHA = sha_of(INCR_EXISTING), sha_of(SWAP)
_UNLOCK_SHA, _EXTEND_LOCK_SHA = sha_of(UNLOCK), sha_of(EXTEND_LOCK)


class RedisDialect:
    """`Cache`'s wants as Redis commands (every Redis topology: pool, cluster, sentinel)."""

    def get(self, key: bytes) -> Command:
        return (b"GET", key)

    def mget(self, keys: Sequence[bytes]) -> Command:
        return (b"MGET", *keys)

    def set(self, key: bytes, data: bytes, px: int | None, only_if_absent: bool) -> Command:
        if px is None:
            return (b"SET", key, data, b"NX") if only_if_absent else (b"SET", key, data)
        if only_if_absent:
            return (b"SET", key, data, b"NX", b"PX", px)
        return (b"SET", key, data, b"PX", px)

    def replace(self, key: bytes, data: bytes, px: int | None) -> Command:
        return (b"SET", key, data, b"XX") if px is None else (b"SET", key, data, b"XX", b"PX", px)

    def delete(self, keys: Sequence[bytes]) -> Command:
        return (b"DEL", *keys)

    def exists(self, key: bytes) -> Command:
        return (b"EXISTS", key)

    def pexpire(self, key: bytes, px: int) -> Command:
        return (b"PEXPIRE", key, px)

    def persist(self, key: bytes) -> list[Command]:
        # PERSIST alone answers 0 both for a missing key and for one without expiry.
        return [(b"PERSIST", key), (b"EXISTS", key)]

    def pttl(self, key: bytes) -> Command:
        return (b"PTTL", key)

    def incrby(self, key: bytes, delta: int) -> Command:
        return (b"INCRBY", key, delta)

    def incr_existing(self, key: bytes, delta: int) -> Command:
        return (b"EVALSHA", _INCR_EXISTING_SHA, 1, key, delta)

    def swap(self, key: bytes, expected: bytes, new: bytes) -> Command:
        return (b"EVALSHA", _SWAP_SHA, 1, key, expected, new)

    def flush(self) -> Command:
        return (b"FLUSHDB",)

    # Locks (the "locks" capability: Redis only).

    def unlock(self, key: bytes, token: bytes) -> Command:
        return (b"EVALSHA", _UNLOCK_SHA, 1, key, token)

    def extend_lock(self, key: bytes, token: bytes, px: int, replace: bool) -> Command:
        return (b"EVALSHA", _EXTEND_LOCK_SHA, 1, key, token, px, b"1" if replace else b"0")

    def unscripted(self, command: Command) -> Command | None:
        if command[0] != b"EVALSHA":
            return None
        return (b"EVAL", _SCRIPTS[command[1]], *command[2:])


REDIS = RedisDialect()
