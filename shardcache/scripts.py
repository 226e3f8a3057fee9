"""The Lua scripts `Cache` runs on Redis, with their SHA1s (sent as EVALSHA, then EVAL if the
server does not know them yet). A topology without Lua (memcache) answers each one by its SHA
with an equivalent of its own, and refuses any other."""

from __future__ import annotations

import hashlib

__all__ = ["INCR_EXISTING", "INCR_EXISTING_SHA", "SWAP", "SWAP_SHA", "sha_of"]


def sha_of(script: bytes) -> bytes:
    return hashlib.sha1(script).hexdigest().encode()


# INCRBY only if the key exists, in one atomic step (INCRBY alone would create it at 0).
INCR_EXISTING = b"""
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""
INCR_EXISTING_SHA = sha_of(INCR_EXISTING)

# Replace the value only if it is still ARGV[1], keeping its time to live: the
# compare-and-set step of a signed counter's increment (the server cannot sign).
SWAP = b"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
    return 1
end
return 0
"""
SWAP_SHA = sha_of(SWAP)
