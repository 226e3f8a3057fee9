"""Redis hashes, sets and sorted sets through a Django cache, with django-redis's method names
and answers, so code written for django-redis keeps working.

Each call goes to the shard of its key (`shardcache.Cache.command`), under the cache's
failure policy. Values, set members and sorted-set members are encoded with the cache's
serializer, compressor and signature; hash fields are stored as plain text. A command on
several keys (``sdiff``, ``sunionstore``, ``smove``...) needs them on one shard: on a
cluster, give them one ``{hash tag}``; otherwise `shardcache.CrossSlotError` says so.

Members are signed without their key (unlike cache values): Redis itself moves them from one
key to another (``SMOVE``, ``SUNIONSTORE``), so a member must verify under any key.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from shardcache import Cache
from shardcache.errors import text_of

__all__ = ["RedisStructures"]

_MEMBER = b""  # the key members are signed under (see the module's docstring)


class RedisStructures:
    """Mixed into the Redis backends; ``core`` and ``make_and_validate_key`` are theirs."""

    core: Cache

    if TYPE_CHECKING:  # BaseCache's, in the backend this is mixed into

        def make_and_validate_key(self, key: Any, version: Any = None) -> str: ...

    # --- encoding -----------------------------------------------------------------------------

    def _en(self, value: Any) -> bytes:
        return self.core.codec.encode(value, _MEMBER)

    def _de(self, data: bytes | None) -> Any:
        return None if data is None else self.core.codec.decode(data, _MEMBER)

    def _run(self, name: str, *args: Any, version: Any = None, keys: int = 1, **kw: Any) -> Any:
        made = [self.make_and_validate_key(key, version) for key in args[:keys]]
        return self.core.command(name, *made, *args[keys:], keys=keys, **kw)

    # --- hashes: fields are plain text, values are encoded --------------------------------------

    def hset(
        self,
        key: Any,
        field: str | None = None,
        value: Any = None,
        mapping: Mapping[str, Any] | None = None,
        version: Any = None,
    ) -> int:
        """Set ``field`` (and/or every field of ``mapping``); how many fields are new."""
        pairs: list[Any] = []
        if field is not None:
            pairs += [field, self._en(value)]
        for name, item in (mapping or {}).items():
            pairs += [name, self._en(item)]
        if not pairs:
            raise ValueError("hset needs a field and value, or a mapping")
        return int(self._run("HSET", key, *pairs, version=version, default=0))

    def hget(self, key: Any, field: str, version: Any = None) -> Any:
        return self._de(self._run("HGET", key, field, version=version, read=True))

    def hgetall(self, key: Any, version: Any = None) -> dict[str, Any]:
        found = self._run("HGETALL", key, version=version, read=True, default={})
        return {text_of(name): self._de(data) for name, data in _pairs(found)}

    def hdel(self, key: Any, *fields: str, version: Any = None) -> int:
        return int(self._run("HDEL", key, *fields, version=version, default=0))

    def hlen(self, key: Any, version: Any = None) -> int:
        return int(self._run("HLEN", key, version=version, read=True, default=0))

    def hkeys(self, key: Any, version: Any = None) -> list[str]:
        return [
            text_of(name)
            for name in self._run("HKEYS", key, version=version, read=True, default=[])
        ]

    def hexists(self, key: Any, field: str, version: Any = None) -> bool:
        return bool(self._run("HEXISTS", key, field, version=version, read=True, default=0))

    # --- sets --------------------------------------------------------------------------------

    def sadd(self, key: Any, *members: Any, version: Any = None) -> int:
        encoded = [self._en(member) for member in members]
        return int(self._run("SADD", key, *encoded, version=version, default=0))

    def srem(self, key: Any, *members: Any, version: Any = None) -> int:
        encoded = [self._en(member) for member in members]
        return int(self._run("SREM", key, *encoded, version=version, default=0))

    def scard(self, key: Any, version: Any = None) -> int:
        return int(self._run("SCARD", key, version=version, read=True, default=0))

    def smembers(self, key: Any, version: Any = None) -> set[Any]:
        return self._members(self._run("SMEMBERS", key, version=version, read=True, default=()))

    def sismember(self, key: Any, member: Any, version: Any = None) -> bool:
        found = self._run("SISMEMBER", key, self._en(member), version=version, read=True)
        return bool(found)

    def smismember(self, key: Any, *members: Any, version: Any = None) -> list[bool]:
        encoded = [self._en(member) for member in members]
        found = self._run("SMISMEMBER", key, *encoded, version=version, read=True, default=[])
        return [bool(flag) for flag in found] or [False] * len(members)

    def smove(self, source: Any, destination: Any, member: Any, version: Any = None) -> bool:
        moved = self._run("SMOVE", source, destination, self._en(member), version=version, keys=2)
        return bool(moved)

    def spop(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        """One member (None if empty), or a set of up to ``count``."""
        if count is None:
            return self._de(self._run("SPOP", key, version=version))
        return self._members(self._run("SPOP", key, count, version=version, default=()))

    def srandmember(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        """One member (None if empty), or a list of up to ``count`` (negative: may repeat)."""
        if count is None:
            return self._de(self._run("SRANDMEMBER", key, version=version, read=True))
        found = self._run("SRANDMEMBER", key, count, version=version, read=True, default=())
        return [self._de(data) for data in found]

    def sscan_iter(
        self, key: Any, match: Any = None, count: int | None = 10, version: Any = None
    ) -> Iterator[Any]:
        """The members, a page at a time; ``match`` is a member to look for (glob
        characters in its encoding would count as glob)."""
        cursor: Any = 0
        while True:
            args: list[Any] = [cursor]
            if match is not None:
                args += ["MATCH", self._en(match)]
            if count:
                args += ["COUNT", count]
            cursor, page = self._run("SSCAN", key, *args, version=version, read=True)
            yield from (self._de(data) for data in page)
            if int(cursor) == 0:
                return

    def sscan(
        self, key: Any, match: Any = None, count: int | None = 10, version: Any = None
    ) -> set[Any]:
        return set(self.sscan_iter(key, match, count, version))

    def sdiff(self, *keys: Any, version: Any = None) -> set[Any]:
        return self._members(self._many("SDIFF", keys, version, read=True))

    def sinter(self, *keys: Any, version: Any = None) -> set[Any]:
        return self._members(self._many("SINTER", keys, version, read=True))

    def sunion(self, *keys: Any, version: Any = None) -> set[Any]:
        return self._members(self._many("SUNION", keys, version, read=True))

    def sdiffstore(
        self,
        dest: Any,
        *keys: Any,
        version_dest: Any = None,
        version_keys: Any = None,
        version: Any = None,
    ) -> int:
        """Store ``keys[0]`` minus the rest under ``dest``; the size of the result."""
        return self._store("SDIFFSTORE", dest, keys, version_dest, version_keys, version)

    def sinterstore(self, dest: Any, *keys: Any, version: Any = None) -> int:
        return self._store("SINTERSTORE", dest, keys, None, None, version)

    def sunionstore(self, dest: Any, *keys: Any, version: Any = None) -> int:
        return self._store("SUNIONSTORE", dest, keys, None, None, version)

    def _many(self, name: str, keys: Iterable[Any], version: Any, **kw: Any) -> Any:
        keys = list(keys)
        return self._run(name, *keys, version=version, keys=len(keys), default=(), **kw)

    def _store(
        self,
        name: str,
        dest: Any,
        keys: Iterable[Any],
        version_dest: Any,
        version_keys: Any,
        version: Any,
    ) -> int:
        made = [self.make_and_validate_key(dest, version_dest if version_dest else version)]
        made += [
            self.make_and_validate_key(k, version_keys if version_keys else version) for k in keys
        ]
        return int(self.core.command(name, *made, keys=len(made), default=0))

    def _members(self, found: Iterable[bytes]) -> set[Any]:
        return {self._de(data) for data in found}

    # --- sorted sets ---------------------------------------------------------------------------

    def zadd(
        self,
        key: Any,
        mapping: Mapping[Any, float],
        nx: bool = False,
        xx: bool = False,
        ch: bool = False,
        incr: bool = False,
        gt: bool = False,
        lt: bool = False,
        version: Any = None,
    ) -> Any:
        """Add members with their scores; how many were added (changed, with ``ch``), or
        the new score with ``incr``."""
        flags = [name for name, on in [("NX", nx), ("XX", xx), ("GT", gt), ("LT", lt)] if on]
        flags += ["CH"] if ch else []
        flags += ["INCR"] if incr else []
        pairs: list[Any] = []
        for member, score in mapping.items():
            pairs += [score, self._en(member)]
        reply = self._run("ZADD", key, *flags, *pairs, version=version)
        if incr:
            return None if reply is None else float(reply)
        return int(reply or 0)

    def zcard(self, key: Any, version: Any = None) -> int:
        return int(self._run("ZCARD", key, version=version, read=True, default=0))

    def zcount(self, key: Any, min: Any = "-inf", max: Any = "+inf", version: Any = None) -> int:
        return int(self._run("ZCOUNT", key, min, max, version=version, read=True, default=0))

    def zincrby(self, key: Any, amount: float, value: Any, version: Any = None) -> float:
        return float(self._run("ZINCRBY", key, amount, self._en(value), version=version))

    def zscore(self, key: Any, member: Any, version: Any = None) -> float | None:
        score = self._run("ZSCORE", key, self._en(member), version=version, read=True)
        return None if score is None else float(score)

    def zrank(self, key: Any, member: Any, version: Any = None) -> int | None:
        return self._run("ZRANK", key, self._en(member), version=version, read=True)

    def zrem(self, key: Any, *members: Any, version: Any = None) -> int:
        encoded = [self._en(member) for member in members]
        return int(self._run("ZREM", key, *encoded, version=version, default=0))

    def zremrangebyscore(self, key: Any, min: Any, max: Any, version: Any = None) -> int:
        return int(self._run("ZREMRANGEBYSCORE", key, min, max, version=version, default=0))

    def zrange(
        self,
        key: Any,
        start: int,
        end: int,
        desc: bool = False,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        name = "ZREVRANGE" if desc else "ZRANGE"
        return self._ranged(name, key, [start, end], withscores, score_cast_func, version)

    def zrevrange(
        self,
        key: Any,
        start: int,
        end: int,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        return self._ranged("ZREVRANGE", key, [start, end], withscores, score_cast_func, version)

    def zrangebyscore(
        self,
        key: Any,
        min: Any,
        max: Any,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        window = (min, max, start, num)
        return self._by_score("ZRANGEBYSCORE", key, window, withscores, score_cast_func, version)

    def zrevrangebyscore(
        self,
        key: Any,
        max: Any,
        min: Any,
        start: int | None = None,
        num: int | None = None,
        withscores: bool = False,
        score_cast_func: Any = float,
        version: Any = None,
    ) -> list[Any]:
        window = (max, min, start, num)
        return self._by_score("ZREVRANGEBYSCORE", key, window, withscores, score_cast_func, version)

    def zpopmax(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        return self._popped("ZPOPMAX", key, count, version)

    def zpopmin(self, key: Any, count: int | None = None, version: Any = None) -> Any:
        return self._popped("ZPOPMIN", key, count, version)

    def _ranged(
        self,
        name: str,
        key: Any,
        args: list[Any],
        withscores: bool,
        cast: Any,
        version: Any,
    ) -> list[Any]:
        extra = ["WITHSCORES"] if withscores else []
        found = self._run(name, key, *args, *extra, version=version, read=True, default=[])
        if not withscores:
            return [self._de(data) for data in found]
        return [(self._de(member), cast(score)) for member, score in _pairs(found)]

    def _by_score(
        self,
        name: str,
        key: Any,
        window: tuple[Any, Any, int | None, int | None],
        withscores: bool,
        cast: Any,
        version: Any,
    ) -> list[Any]:
        first, last, start, num = window
        page = ["LIMIT", start, num] if start is not None and num is not None else []
        return self._ranged(name, key, [first, last, *page], withscores, cast, version)

    def _popped(self, name: str, key: Any, count: int | None, version: Any) -> Any:
        """django-redis's answer: one ``(member, score)`` (None if empty) without ``count``,
        else a list of them."""
        found = self._run(name, key, *([count] if count else []), version=version, default=[])
        pairs = [(self._de(member), float(score)) for member, score in _pairs(found)]
        if count is None:
            return pairs[0] if pairs else None
        return pairs


def _pairs(found: Any) -> list[tuple[Any, Any]]:
    """(member, score) or (field, value) pairs from a reply in either protocol: RESP2's flat
    list, RESP3's list of pairs or map."""
    if isinstance(found, dict):
        return list(found.items())
    if found and isinstance(found[0], list):
        return [(pair[0], pair[1]) for pair in found]
    return [(found[i], found[i + 1]) for i in range(0, len(found), 2)]
