"""`RedisRecordStore`: the record store on any Redis topology of shardcache.

Every key lives under one ``{hash tag}``, so the whole store is on one shard (one cluster
slot) and each operation is one Lua script, atomic on the server:

    {tag}:sv            server version (a new random one after `clear`)
    {tag}:lv            last version given out
    {tag}:ch            pub/sub channel: the last version after each write
    {tag}:types         every record type written since the last clear
    {tag}:r:<type>      hash id -> stored record (current records only)
    {tag}:ix:<type>     sorted set id by version (current records: oldest first)
    {tag}:c:<type>      sorted set of stored changes by version (the change log)
    {tag}:log           list "version:ms:type" in version order (for retention)
    {tag}:trimmed       the highest version dropped from the change log
    {tag}:opt           hash type -> "capacity|ttl_ms"
    {tag}:lease:<name>  the holder's id, with the lease's expiry; {tag}:leases their names

Unlike Pomerium's databroker: ``lv`` ends at the batch's LAST version (so no version is
given out twice), leases are one compare-and-set script (not WATCH/MULTI), and a cursor
older than the retained log is an error instead of a silent gap.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from shardcache.errors import (
    CommandError,
    ConfigurationError,
    InvalidRecordVersion,
    InvalidServerVersion,
    ShardError,
)
from shardcache.protocols import SCRIPTS, Shard, Topology
from shardcache.records.base import BaseRecordStore, Commit, Lease
from shardcache.records.memory import new_server_version

__all__ = ["RedisRecordStore"]

_SCRIPT = b"""
local op, p = ARGV[1], ARGV[2]
local lv, touched = 0, false

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function server_version(candidate)
  redis.call('SET', p .. 'sv', candidate, 'NX')
  return redis.call('GET', p .. 'sv')
end
local function tomb(typ, id)
  return '"t":' .. cjson.encode(typ) .. ',"i":' .. cjson.encode(id) .. ',"x":1}'
end
local function write(typ, id, rest, deleted, now)
  lv = lv + 1
  local v, m = string.format('%d', lv), string.format('%d', now)
  local stored = '{"v":' .. v .. ',"m":' .. m .. ',' .. rest
  if deleted then
    redis.call('HDEL', p .. 'r:' .. typ, id)
    redis.call('ZREM', p .. 'ix:' .. typ, id)
  else
    redis.call('HSET', p .. 'r:' .. typ, id, stored)
    redis.call('ZADD', p .. 'ix:' .. typ, v, id)
  end
  redis.call('ZADD', p .. 'c:' .. typ, v, stored)
  redis.call('RPUSH', p .. 'log', v .. ':' .. m .. ':' .. typ)
  redis.call('SADD', p .. 'types', typ)
  touched = true
end
local function options(typ)
  local o = redis.call('HGET', p .. 'opt', typ)
  if not o then return nil, nil end
  local capacity, ttl = string.match(o, '^(%d*)|(%d*)$')
  return tonumber(capacity), tonumber(ttl)
end
local function trim(typ, now)
  local capacity = options(typ)
  if capacity == nil then return 0 end
  local excess = redis.call('ZCARD', p .. 'ix:' .. typ) - capacity
  if excess <= 0 then return 0 end
  local oldest = redis.call('ZRANGE', p .. 'ix:' .. typ, 0, excess - 1)
  for _, id in ipairs(oldest) do write(typ, id, tomb(typ, id), true, now) end
  return #oldest
end
local function expire(typ, now, budget)
  local _, ttl = options(typ)
  local n = 0
  while ttl ~= nil and n < budget do
    local first = redis.call('ZRANGE', p .. 'ix:' .. typ, 0, 0)
    if #first == 0 then break end
    local stored = redis.call('HGET', p .. 'r:' .. typ, first[1])
    if tonumber(string.match(stored, '^{"v":%d+,"m":(%d+),')) >= now - ttl then break end
    write(typ, first[1], tomb(typ, first[1]), true, now)
    n = n + 1
  end
  return n
end
local function retain(now, expiry, budget)
  local trimmed = nil
  for _ = 1, budget do
    local entry = redis.call('LINDEX', p .. 'log', 0)
    if not entry then break end
    local v, m, typ = string.match(entry, '^(%d+):(%d+):(.*)$')
    if tonumber(m) >= now - expiry then break end
    redis.call('LPOP', p .. 'log')
    redis.call('ZREMRANGEBYSCORE', p .. 'c:' .. typ, v, v)
    trimmed = v
  end
  if trimmed then redis.call('SET', p .. 'trimmed', trimmed) end
end
local function maintain(now, expiry, budget)
  local n = 0
  local all = redis.call('HKEYS', p .. 'opt')
  for _, typ in ipairs(all) do n = n + trim(typ, now) + expire(typ, now, budget) end
  retain(now, expiry, budget)
  return n
end
local function finish()
  if touched then
    redis.call('SET', p .. 'lv', string.format('%d', lv))
    redis.call('PUBLISH', p .. 'ch', string.format('%d', lv))
  end
end

if op == 'put' then
  -- ARGV: candidate sv, change expiry ms, n, after (or ''), then per record: type, id,
  -- rest, deleted, expect
  local sv = server_version(ARGV[3])
  local n = tonumber(ARGV[5])
  for i = 0, n - 1 do
    local b = 7 + i * 5
    if ARGV[b + 4] ~= '' then
      local found = redis.call('ZSCORE', p .. 'ix:' .. ARGV[b], ARGV[b + 1])
      if (tonumber(found) or 0) ~= tonumber(ARGV[b + 4]) then return {sv, 0} end
    end
  end
  lv = tonumber(redis.call('GET', p .. 'lv') or '0')
  if ARGV[6] ~= '' and lv ~= tonumber(ARGV[6]) then return {sv, 0} end
  local now = now_ms()
  local types = {}
  for i = 0, n - 1 do
    local b = 7 + i * 5
    write(ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3] == '1', now)
    types[ARGV[b]] = true
  end
  for typ in pairs(types) do trim(typ, now) end
  maintain(now, tonumber(ARGV[4]), 100)
  finish()
  return {sv, 1}
elseif op == 'maintain' then
  server_version(ARGV[3])
  lv = tonumber(redis.call('GET', p .. 'lv') or '0')
  local n = maintain(now_ms(), tonumber(ARGV[4]), 1000)
  finish()
  return n
elseif op == 'changes' then
  -- ARGV: sv, type, after, limit
  local sv = redis.call('GET', p .. 'sv')
  if sv ~= ARGV[3] then return redis.error_reply('SERVERVERSION now ' .. tostring(sv)) end
  local trimmed = tonumber(redis.call('GET', p .. 'trimmed') or '0')
  if tonumber(ARGV[5]) < trimmed then
    return redis.error_reply('RECORDVERSION kept from ' .. string.format('%d', trimmed + 1))
  end
  if tonumber(ARGV[6]) == 0 then return {} end
  return redis.call('ZRANGEBYSCORE', p .. 'c:' .. ARGV[4], '(' .. ARGV[5], '+inf',
                    'LIMIT', 0, ARGV[6])
elseif op == 'snapshot' then
  local sv = server_version(ARGV[3])
  local last = redis.call('GET', p .. 'lv') or '0'
  return {sv, last, redis.call('ZRANGE', p .. 'ix:' .. ARGV[4], 0, -1)}
elseif op == 'clear' then
  for _, typ in ipairs(redis.call('SMEMBERS', p .. 'types')) do
    redis.call('DEL', p .. 'r:' .. typ, p .. 'ix:' .. typ, p .. 'c:' .. typ)
  end
  redis.call('DEL', p .. 'types', p .. 'log', p .. 'trimmed', p .. 'lv')
  redis.call('SET', p .. 'sv', ARGV[3])
  redis.call('PUBLISH', p .. 'ch', '0')
  return 1
elseif op == 'lease' then
  local key = p .. 'lease:' .. ARGV[3]
  local holder = redis.call('GET', key)
  if holder and holder ~= ARGV[4] then return 0 end
  redis.call('SET', key, ARGV[4], 'PX', ARGV[5])
  redis.call('SADD', p .. 'leases', ARGV[3])
  return 1
elseif op == 'release' then
  local key = p .. 'lease:' .. ARGV[3]
  if redis.call('GET', key) ~= ARGV[4] then return 0 end
  redis.call('DEL', key)
  return 1
elseif op == 'leases' then
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', p .. 'leases')) do
    local key = p .. 'lease:' .. name
    local holder = redis.call('GET', key)
    if holder then
      table.insert(out, name)
      table.insert(out, holder)
      table.insert(out, redis.call('PTTL', key))
    else
      redis.call('SREM', p .. 'leases', name)
    end
  end
  return out
end
return redis.error_reply('unknown record store operation ' .. tostring(op))
"""
_SHA = hashlib.sha1(_SCRIPT).hexdigest().encode()


class RedisRecordStore(BaseRecordStore):
    """The record store on ``topology`` (a `HashPool`, `Cluster` or `SentinelClient`), all
    its keys under the hash tag ``{name}``: on a pool or several sentinel masters, the one
    shard that tag hashes to; on a cluster, the node serving its slot."""

    def __init__(self, topology: Topology, *, name: str = "shardcache-records", **options: Any):
        super().__init__(**options)
        if not name or any(c in name for c in "{}"):
            raise ValueError(f"a store name is non-empty and has no braces, not {name!r}")
        if SCRIPTS not in getattr(topology, "capabilities", ()):
            raise ConfigurationError(
                f"RedisRecordStore runs every operation as a Lua script, which {topology!r} "
                "cannot: give it a HashPool, a Cluster or a SentinelClient"
            )
        self.topology = topology
        self.prefix = f"{{{name}}}:"
        self._route = (self.prefix + "lv").encode()

    def __repr__(self) -> str:
        return f"<RedisRecordStore {self.prefix[:-1]} on {self.topology!r}>"

    def _shard(self) -> Shard:
        return self.topology.shard_for(self._route)

    def _key(self, part: str) -> bytes:
        return (self.prefix + part).encode()

    def _run(self, *args: Any) -> Any:
        shard = self._shard()
        argv = (1, self._route, *args[:1], self.prefix, *args[1:])
        try:
            try:
                return shard.execute(b"EVALSHA", _SHA, *argv, key=self._route)
            except CommandError as exc:
                if not isinstance(exc.reply, NoScriptError):
                    raise
                return shard.execute(b"EVAL", _SCRIPT, *argv, key=self._route)
        except CommandError as exc:
            text = str(exc.reply)
            if text.startswith("SERVERVERSION"):
                raise InvalidServerVersion(f"the store was reset ({text}): sync_latest") from None
            if text.startswith("RECORDVERSION"):
                raise InvalidRecordVersion(f"the change log was trimmed ({text})") from None
            raise

    def _command(self, *args: Any) -> Any:
        key = args[1]
        return self._shard().execute(*args, key=key, idempotent=args[0] in _READS)

    # --- primitives ------------------------------------------------------------------------

    def _commit(self, commits: Sequence[Commit], *, after: int | None = None) -> tuple[int, bool]:
        argv: list[Any] = [b"put", new_server_version(), int(self.change_expiry * 1000)]
        argv += [len(commits), _expect(after)]
        for c in commits:
            argv += [c.type, c.id, c.rest, b"1" if c.deleted else b"", _expect(c.expect)]
        server_version, applied = self._run(*argv)
        return int(server_version), bool(applied)

    def _last_version(self) -> int:
        return int(self._command(b"GET", self._key("lv")) or 0)

    def maintain(self) -> int:
        return int(self._run(b"maintain", new_server_version(), int(self.change_expiry * 1000)))

    def _changes(
        self, record_type: str, server_version: int, after: int, limit: int
    ) -> list[str | bytes]:
        return list(self._run(b"changes", server_version, record_type, after, limit))

    def _snapshot(self, record_type: str) -> tuple[int, int, list[str]]:
        server_version, last, ids = self._run(b"snapshot", new_server_version(), record_type)
        return int(server_version), int(last), [i.decode() for i in ids]

    def clear(self) -> None:
        self._run(b"clear", new_server_version())

    def _get_raw(self, record_type: str, record_id: str) -> bytes | None:
        found: bytes | None = self._command(b"HGET", self._key("r:" + record_type), record_id)
        return found

    def _get_many_raw(
        self, record_type: str, record_ids: Sequence[str]
    ) -> list[str | bytes | None]:
        if not record_ids:
            return []
        return list(self._command(b"HMGET", self._key("r:" + record_type), *record_ids))

    def _types(self) -> Iterable[str]:
        return [t.decode() for t in self._command(b"SMEMBERS", self._key("types"))]

    def _set_options(self, record_type: str, encoded: str) -> None:
        self._command(b"HSET", self._key("opt"), record_type, encoded)

    def _get_options(self, record_type: str) -> bytes | None:
        found: bytes | None = self._command(b"HGET", self._key("opt"), record_type)
        return found

    def _lease(self, name: str, holder_id: str, ttl_ms: int) -> bool:
        return bool(self._run(b"lease", name, holder_id, ttl_ms))

    def _release(self, name: str, holder_id: str) -> bool:
        return bool(self._run(b"release", name, holder_id))

    def _leases(self) -> list[Lease]:
        flat = self._run(b"leases")
        return [
            Lease(flat[i].decode(), flat[i + 1].decode(), max(0, int(flat[i + 2])) / 1000)
            for i in range(0, len(flat), 3)
        ]

    def _waiter(self) -> _PubSubWaiter:
        return _PubSubWaiter(self)

    def stats(self) -> dict[str, Any]:
        shard = self._shard()
        types = sorted(self._types())
        replies = shard.pipeline(
            [
                (b"GET", self._key("sv")),
                (b"GET", self._key("lv")),
                (b"LLEN", self._key("log")),
                (b"LINDEX", self._key("log"), 0),
                *[(b"ZCARD", self._key("ix:" + t)) for t in types],
            ]
        )
        for reply in replies:
            if isinstance(reply, ShardError):
                raise reply
        server_version, last, changes, oldest, *counts = replies
        return {
            "server_version": int(server_version or 0),
            "last_version": int(last or 0),
            "types": dict(zip(types, counts, strict=True)),
            "changes": changes,
            "oldest_change": int(oldest.split(b":")[0]) if oldest else None,
        }

    def close(self) -> None:
        self.topology.close()


_READS = frozenset({b"HGET", b"HMGET", b"SMEMBERS"})


def _expect(version: int | None) -> bytes:
    return b"" if version is None else str(version).encode()


class _PubSubWaiter:
    """Wakes a waiting sync on the store's channel. Any trouble with the subscription (a
    failover, a restart) costs at most one poll interval: the sync polls regardless."""

    def __init__(self, store: RedisRecordStore) -> None:
        self.store = store
        self.channel = store._key("ch")
        self.pubsub: Any = None
        self._subscribe()

    def _subscribe(self) -> None:
        try:
            pubsub = self.store._shard().client().pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            self.pubsub = pubsub
        except (redis.RedisError, OSError, ShardError):
            self.pubsub = None

    def wait(self, timeout: float) -> None:
        if self.pubsub is None:
            self._subscribe()
        if self.pubsub is None:
            time.sleep(timeout)  # no subscription: poll
            return
        try:
            self.pubsub.get_message(timeout=timeout)
            while self.pubsub.get_message(timeout=0) is not None:
                pass  # several puts: one look covers them all
        except (redis.RedisError, OSError):
            self.close()

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            finally:
                self.pubsub = None
