"""The cache layer: one `Cache` over any Redis topology.

Keys get the cache's prefix; values go through the `Codec` (plain integers, serializer,
compressor, signature); multi-key calls are grouped by shard, one pipeline per shard, every
shard's batch sent before any reply is read, so all shards work at once from one thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.lock
from redis.exceptions import NoScriptError

from shardcache import aio
from shardcache.codec import MAX_VALUE_SIZE, MISSING, Codec, Secret
from shardcache.compressors import COMPRESSORS, Compressor
from shardcache.config import resolve_strategy
from shardcache.errors import (
    CommandError,
    ConfigurationError,
    InvalidKeyError,
    MissingKeyError,
    NotAnIntegerError,
    OutOfRangeError,
    SerializationError,
    ShardError,
    ShardUnavailableError,
    key_text,
)
from shardcache.protocols import PendingBatch, Shard, Topology
from shardcache.scripts import INCR_EXISTING, INCR_EXISTING_SHA, SWAP, SWAP_SHA
from shardcache.serializers import SERIALIZERS, Serializer

__all__ = ["Cache"]

logger = logging.getLogger("shardcache")

T = TypeVar("T")
Key = str | bytes
# An operation's steps: it yields what to send where, and is sent back each result.
Steps = Generator[tuple[Any, ...], Any, T]
_EXEC, _PIPE, _FAN = "exec", "pipe", "fan"
KeyT = TypeVar("KeyT", bound=str | bytes)

_SCRIPTS = {INCR_EXISTING_SHA: INCR_EXISTING, SWAP_SHA: SWAP}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SWAP_BUDGET = 30.0  # seconds a signed incr may spend losing compare-and-sets to other writers

_GLOB_SPECIAL = frozenset(b"*?[]\\")
_SCAN_BATCH = 1000


class Cache:
    """A cache over a sharded topology (`HashPool`, and the cluster and sentinel topologies).

    ``ttl`` is in seconds (float allowed); ``None`` means no expiry; ``ttl <= 0`` means the
    value is not kept (a ``set`` removes the key). ``prefix`` namespaces every key, and
    `clear` removes only keys under it. ``serializer`` is ``"pickle"`` (default), ``"json"``,
    ``"msgpack"``, a dotted path, a class or an instance; ``compressor`` is ``None``,
    ``"zlib"``, ``"zstd"``, ``"lz4"`` or the same kinds of object, applied to values of at
    least ``compress_threshold`` bytes. With ``signing_secret`` (one secret, or a list whose
    first signs and all verify) every value is signed (HMAC-SHA256), integers included, and
    one that fails the check is a miss, never unpickled; ``incr`` is then a compare-and-set
    (two round trips, more while other writers race on the same key). A value that would
    serialize or decompress past ``max_value_size`` bytes (64 MiB) is refused or unreadable.

    A value that cannot be decoded is a miss plus a logged warning. With
    ``ignore_errors=True`` an unreachable shard is too: reads miss, writes return False.
    """

    def __init__(
        self,
        topology: Topology,
        *,
        prefix: str | bytes = "",
        serializer: str | Serializer | type[Serializer] = "pickle",
        compressor: str | Compressor | type[Compressor] | None = None,
        compress_threshold: int = 1024,
        signing_secret: Secret | Sequence[Secret] | None = None,
        max_value_size: int = MAX_VALUE_SIZE,
        ignore_errors: bool = False,
    ) -> None:
        if not isinstance(topology, Topology):
            raise ConfigurationError(f"{topology!r} does not implement the shard protocol")
        self.topology = topology
        self.prefix = prefix.encode() if isinstance(prefix, str) else bytes(prefix)
        self.codec = Codec(
            resolve_strategy(serializer, SERIALIZERS, "serializer"),
            compressor=None
            if compressor is None
            else resolve_strategy(compressor, COMPRESSORS, "compressor"),
            compress_threshold=compress_threshold,
            signing_secret=signing_secret,
            max_value_size=max_value_size,
        )
        self.ignore_errors = ignore_errors

    def __repr__(self) -> str:
        return f"<Cache prefix={self.prefix!r} on {self.topology!r}>"

    # --- keys, values, failures --------------------------------------------------------------

    def make_key(self, key: Key) -> bytes:
        """The stored key: the prefix, then ``key`` (str is encoded as UTF-8)."""
        if isinstance(key, str):
            data = key.encode()
        elif isinstance(key, bytes):
            data = key
        else:
            raise InvalidKeyError(f"cache keys are str or bytes, not {type(key).__name__}")
        if not data:
            raise InvalidKeyError("cache keys cannot be empty")
        return self.prefix + data

    def _decode(self, raw: bytes, key: bytes, default: Any) -> Any:
        try:
            return self.codec.decode(raw, key)
        except SerializationError as exc:
            self._warn_unreadable(key, exc)
            return default

    @staticmethod
    def _warn_unreadable(key: bytes, exc: SerializationError) -> None:
        logger.warning(
            "shardcache: unreadable value under %s treated as a miss: %s", key_text(key), exc
        )

    def _unavailable(self, exc: ShardUnavailableError, fallback: T) -> T:
        if not self.ignore_errors:
            raise exc
        logger.warning("shardcache: %s; ignored (ignore_errors=True)", exc)
        return fallback

    # --- the drivers ------------------------------------------------------------------------
    #
    # Each operation is written once, as a generator of steps (`_EXEC`: one command on a
    # shard; `_PIPE`: a batch on a shard; `_FAN`: batches on many shards at once) that gets
    # each step's result sent back, or its `ShardError` thrown in. `_sync` runs the steps on
    # the shards' sockets; `_async` on their asyncio connections (`shardcache.aio`).

    def _sync(self, steps: Steps[T]) -> T:
        send, throw = steps.send, steps.throw
        try:
            step = next(steps)
            while True:
                try:
                    kind = step[0]
                    if kind is _EXEC:
                        result = step[1].execute(*step[2], key=step[3], idempotent=step[4])
                    elif kind is _FAN:
                        result = self._fan_out(step[1])
                    else:
                        result = step[1].pipeline(step[2])
                except ShardError as exc:
                    step = throw(exc)
                else:
                    step = send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _async(self, steps: Steps[T]) -> T:
        send, throw = steps.send, steps.throw
        try:
            step = next(steps)
            while True:
                try:
                    kind = step[0]
                    if kind is _EXEC:
                        result = await aio.execute(step[1], step[2], step[3], step[4])
                    elif kind is _FAN:
                        result = await aio.fan_out(step[1])
                    else:
                        result = await aio.pipeline(step[1], step[2])
                except ShardError as exc:
                    step = throw(exc)
                else:
                    step = send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _run(self, key: bytes, fallback: Any, *args: Any, read: bool = False) -> Steps[Any]:
        """One command on the shard of ``key``, under the failure policy. ``read`` commands
        are idempotent (retried once on a dead pooled connection) and may go to a replica
        when the topology is configured for replica reads."""
        try:
            shard = self.topology.shard_for(key, read=read)
            return (yield (_EXEC, shard, args, key, read))
        except ShardUnavailableError as exc:
            return self._unavailable(exc, fallback)

    def _fan_out(
        self, commands: Mapping[Shard, Sequence[Sequence[Any]]]
    ) -> dict[Shard, list[Any] | ShardUnavailableError]:
        """Send each shard its commands, then read every reply; a shard that fails gives its
        error in place of its replies, so the others still answer."""
        pending: list[tuple[Shard, PendingBatch | ShardUnavailableError]] = []
        try:
            for shard, batch in commands.items():
                try:
                    pending.append((shard, shard.begin(batch)))
                except ShardUnavailableError as exc:
                    pending.append((shard, exc))
        except BaseException:
            # Read what was sent, so no connection goes back to a pool with replies pending.
            for _, started in pending:
                if not isinstance(started, ShardUnavailableError):
                    with contextlib.suppress(ShardUnavailableError):
                        started.finish()
            raise
        results: dict[Shard, list[Any] | ShardUnavailableError] = {}
        for shard, started in pending:
            if isinstance(started, ShardUnavailableError):
                results[shard] = started
                continue
            try:
                results[shard] = started.finish()
            except ShardUnavailableError as exc:
                results[shard] = exc
        return results

    @staticmethod
    def _px(ttl: float) -> int:
        return max(1, math.ceil(ttl * 1000))

    # --- single keys -----------------------------------------------------------------------

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing or unreadable."""
        return self._sync(self._get(key, default))

    async def aget(self, key: Key, default: Any = None) -> Any:
        return await self._async(self._get(key, default))

    def _get(self, key: Key, default: Any) -> Steps[Any]:
        k = self.make_key(key)
        raw = yield from self._run(k, None, b"GET", k, read=True)
        return default if raw is None else self._decode(raw, k, default)

    def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` under ``key``; True when stored."""
        return self._sync(self._set(key, value, ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._async(self._set(key, value, ttl))

    def _set(self, key: Key, value: Any, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        if ttl is not None and ttl <= 0:
            yield from self._run(k, 0, b"DEL", k)
            return True
        data = self.codec.encode(value, k)
        if ttl is None:
            return (yield from self._run(k, None, b"SET", k, data)) is not None
        return (yield from self._run(k, None, b"SET", k, data, b"PX", self._px(ttl))) is not None

    def add(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (atomic: usable as a lock); True if stored."""
        return self._sync(self._add(key, value, ttl))

    async def aadd(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._async(self._add(key, value, ttl))

    def _add(self, key: Key, value: Any, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        data = self.codec.encode(value, k)
        if ttl is None:
            return (yield from self._run(k, None, b"SET", k, data, b"NX")) is not None
        if ttl <= 0:  # as Django: report whether it would have been added, keep nothing
            added = (yield from self._run(k, None, b"SET", k, data, b"NX")) is not None
            if added:
                yield from self._run(k, 0, b"DEL", k)
            return added
        px = self._px(ttl)
        return (yield from self._run(k, None, b"SET", k, data, b"NX", b"PX", px)) is not None

    def delete(self, key: Key) -> bool:
        """Remove ``key``; True if it existed."""
        return self._sync(self._delete(key))

    async def adelete(self, key: Key) -> bool:
        return await self._async(self._delete(key))

    def _delete(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        return bool((yield from self._run(k, 0, b"DEL", k)))

    def has(self, key: Key) -> bool:
        """Whether ``key`` exists."""
        return self._sync(self._has(key))

    async def ahas(self, key: Key) -> bool:
        return await self._async(self._has(key))

    def _has(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        return bool((yield from self._run(k, 0, b"EXISTS", k, read=True)))

    def incr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        """Add ``delta`` to the integer under ``key`` atomically on the server and return the
        new value. A missing key raises `MissingKeyError` (a ValueError), or with ``create``
        starts at 0 (and never expires, as INCRBY's). A value that is not an integer raises
        `NotAnIntegerError` (a TypeError)."""
        return self._sync(self._incr(key, delta, create))

    async def aincr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        return await self._async(self._incr(key, delta, create))

    def decr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        """`incr` by ``-delta``."""
        return self._sync(self._incr(key, -delta, create))

    async def adecr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        return await self._async(self._incr(key, -delta, create))

    def _incr(self, key: Key, delta: int, create: bool) -> Steps[int]:
        k = self.make_key(key)
        if not _INT64_MIN <= delta <= _INT64_MAX:
            raise OutOfRangeError(f"delta {delta} is outside the servers' 64-bit counters")
        if self.codec.signed:
            return (yield from self._incr_signed(key, k, delta, create))
        shard = self.topology.shard_for(k)
        result: Any
        try:
            if create:
                result = yield (_EXEC, shard, (b"INCRBY", k, delta), k, False)
            else:
                result = yield from self._script(shard, k, INCR_EXISTING_SHA, delta)
        except CommandError as exc:
            if "overflow" in str(exc):
                raise OutOfRangeError(f"incr of {key_text(key)} by {delta} would overflow") from exc
            if "not an integer" in str(exc):
                raise NotAnIntegerError(f"{key_text(key)} does not hold an integer: {exc}") from exc
            raise
        except ShardUnavailableError as exc:
            self._unavailable(exc, None)
            result = None
        if result is None:
            raise MissingKeyError(f"key {key_text(key)} not found")
        return int(result)

    def _incr_signed(self, key: Key, k: bytes, delta: int, create: bool) -> Steps[int]:
        # The server cannot sign, so it cannot add: read and check the signed counter, then
        # swap in the new one only if nobody changed it meanwhile (else read again).
        shard = self.topology.shard_for(k)
        deadline = time.monotonic() + _SWAP_BUDGET
        absent = 0
        try:
            while True:
                raw = yield (_EXEC, shard, (b"GET", k), k, True)
                value = MISSING
                if raw is not None:
                    try:
                        value = self.codec.decode(raw, k)
                    except SerializationError as exc:
                        self._warn_unreadable(k, exc)  # planted or foreign: not a counter
                if value is MISSING and not create:
                    raise MissingKeyError(f"key {key_text(key)} not found")
                if value is not MISSING and type(value) is not int:
                    raise NotAnIntegerError(f"{key_text(key)} does not hold an integer")
                new = delta if value is MISSING else value + delta
                data = self.codec.encode(new, k)
                if raw is None:
                    done = yield (_EXEC, shard, (b"SET", k, data, b"NX"), k, False)
                    absent = 0 if done else absent + 1
                    if absent > 1:  # NX keeps failing on a key that reads as absent
                        raise MissingKeyError(f"key {key_text(key)} cannot be created here")
                else:
                    done = yield from self._script(shard, k, SWAP_SHA, raw, data)
                if done:
                    return new
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"incr gave up after {_SWAP_BUDGET:g}s of conflicting writers",
                        shard=getattr(shard, "id", ""),
                        key=k,
                    )
        except ShardUnavailableError as exc:
            self._unavailable(exc, None)
            raise MissingKeyError(f"key {key_text(key)} not found") from exc

    def _script(self, shard: Shard, k: bytes, sha: bytes, *args: Any) -> Steps[Any]:
        """Run one of `shardcache.scripts` on ``k``'s shard: by its SHA, then whole if the
        server does not know it yet."""
        try:
            return (yield (_EXEC, shard, (b"EVALSHA", sha, 1, k, *args), k, False))
        except CommandError as exc:
            if not isinstance(exc.reply, NoScriptError):
                raise
        return (yield (_EXEC, shard, (b"EVAL", _SCRIPTS[sha], 1, k, *args), k, False))

    def touch(self, key: Key, ttl: float | None = None) -> bool:
        """Give ``key`` a new time to live (``None``: no expiry); True if the key exists."""
        return self._sync(self._touch(key, ttl))

    async def atouch(self, key: Key, ttl: float | None = None) -> bool:
        return await self._async(self._touch(key, ttl))

    def _touch(self, key: Key, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        if ttl is not None and ttl <= 0:
            return bool((yield from self._run(k, 0, b"DEL", k)))
        if ttl is None:
            return (yield from self._persist(key))
        return bool((yield from self._run(k, 0, b"PEXPIRE", k, self._px(ttl))))

    def expire(self, key: Key, ttl: float | None) -> bool:
        """`touch`, under django-redis's name."""
        return self.touch(key, ttl)

    async def aexpire(self, key: Key, ttl: float | None) -> bool:
        return await self.atouch(key, ttl)

    def persist(self, key: Key) -> bool:
        """Remove ``key``'s expiry; True if the key exists."""
        return self._sync(self._persist(key))

    async def apersist(self, key: Key) -> bool:
        return await self._async(self._persist(key))

    def _persist(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        try:
            shard = self.topology.shard_for(k)
            _, exists = yield (_PIPE, shard, [(b"PERSIST", k), (b"EXISTS", k)])
        except ShardUnavailableError as exc:
            return self._unavailable(exc, False)
        return bool(exists)

    def ttl(self, key: Key) -> float | None:
        """Seconds left before ``key`` expires; ``None`` if it never does; 0.0 if it is missing."""
        return self._sync(self._ttl(key))

    async def attl(self, key: Key) -> float | None:
        return await self._async(self._ttl(key))

    def _ttl(self, key: Key) -> Steps[float | None]:
        k = self.make_key(key)
        ms = yield from self._run(k, -2, b"PTTL", k, read=True)
        if ms == -1:
            return None
        return max(0.0, float(ms) / 1000)

    def lock(
        self,
        key: Key,
        timeout: float | None = None,
        blocking_timeout: float | None = None,
        sleep: float = 0.1,
    ) -> redis.lock.Lock:
        """A redis-py ``Lock`` named ``key`` on the shard of ``key`` (use it as ``with``)."""
        k = self.make_key(key)
        client = self.topology.shard_for(k).client()
        # redis-py annotates the name as str, but sends bytes as they are.
        name: Any = k
        return redis.lock.Lock(
            client, name, timeout=timeout, blocking_timeout=blocking_timeout, sleep=sleep
        )

    # --- many keys -----------------------------------------------------------------------------

    def _keys(self, keys: Iterable[KeyT]) -> tuple[list[KeyT], list[bytes]]:
        originals = list(keys)
        prefix = self.prefix
        try:  # the common case, all str keys, in one comprehension
            made = [prefix + key.encode() for key in originals]  # type: ignore[union-attr]
        except AttributeError:
            return originals, [self.make_key(key) for key in originals]
        if made and min(map(len, made)) == len(prefix):
            made = [self.make_key(key) for key in originals]  # raises on the empty key
        return originals, made

    def get_many(self, keys: Iterable[KeyT]) -> dict[KeyT, Any]:
        """The values of the ``keys`` that exist, in the caller's order: one MGET per shard."""
        return self._sync(self._get_many(keys))

    async def aget_many(self, keys: Iterable[KeyT]) -> dict[KeyT, Any]:
        return await self._async(self._get_many(keys))

    def _get_many(self, keys: Iterable[KeyT]) -> Steps[dict[KeyT, Any]]:
        originals, made = self._keys(keys)
        if not made:
            return {}
        groups = self.topology.group(made, read=True)
        commands = {shard: [(b"MGET", *run) for run in runs] for shard, runs in groups.items()}
        found: dict[bytes, bytes] = {}
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield (_FAN, commands)
        for shard, replies in outcome.items():
            if isinstance(replies, ShardUnavailableError):
                self._unavailable(replies, None)
                continue
            for run, values in zip(groups[shard], replies, strict=True):
                if isinstance(values, ShardError):
                    raise values
                found.update(zip(run, values, strict=True))
        values = self.codec.decode_batch(list(map(found.get, made)), made, self._warn_unreadable)
        return {
            original: value
            for original, value in zip(originals, values, strict=True)
            if value is not MISSING
        }

    def set_many(self, mapping: Mapping[KeyT, Any], ttl: float | None = None) -> list[KeyT]:
        """Store every item (one pipeline of SET per shard); return the keys that failed."""
        return self._sync(self._set_many(mapping, ttl))

    async def aset_many(self, mapping: Mapping[KeyT, Any], ttl: float | None = None) -> list[KeyT]:
        return await self._async(self._set_many(mapping, ttl))

    def _set_many(self, mapping: Mapping[KeyT, Any], ttl: float | None) -> Steps[list[KeyT]]:
        originals, made = self._keys(mapping)
        if not made:
            return []
        if ttl is not None and ttl <= 0:
            yield from self._delete_many(originals)
            return []
        original_of = dict(zip(made, originals, strict=True))
        encode = self.codec.encode
        encoded = {k: encode(mapping[o], k) for k, o in original_of.items()}
        groups = self.topology.group(made)
        commands: dict[Shard, list[tuple[Any, ...]]]
        if ttl is None:
            commands = {
                shard: [(b"SET", k, encoded[k]) for run in runs for k in run]
                for shard, runs in groups.items()
            }
        else:
            px = self._px(ttl)
            commands = {
                shard: [(b"SET", k, encoded[k], b"PX", px) for run in runs for k in run]
                for shard, runs in groups.items()
            }
        failed: list[KeyT] = []
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield (_FAN, commands)
        for shard, replies in outcome.items():
            keys = [k for run in groups[shard] for k in run]
            if isinstance(replies, ShardUnavailableError):
                self._unavailable(replies, None)
                failed += [original_of[k] for k in keys]
                continue
            failed += [original_of[k] for k, ok in zip(keys, replies, strict=True) if ok != b"OK"]
        return failed

    def delete_many(self, keys: Iterable[Key]) -> int:
        """Remove the ``keys``; return how many existed. One DEL per shard (per slot)."""
        return self._sync(self._delete_many(keys))

    async def adelete_many(self, keys: Iterable[Key]) -> int:
        return await self._async(self._delete_many(keys))

    def _delete_many(self, keys: Iterable[Key]) -> Steps[int]:
        _, made = self._keys(keys)
        if not made:
            return 0
        groups = self.topology.group(made)
        commands = {shard: [(b"DEL", *run) for run in runs] for shard, runs in groups.items()}
        deleted = 0
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield (_FAN, commands)
        for replies in outcome.values():
            if isinstance(replies, ShardUnavailableError):
                self._unavailable(replies, None)
                continue
            for reply in replies:
                if isinstance(reply, ShardError):
                    raise reply
                deleted += reply
        return deleted

    # --- the whole cache ---------------------------------------------------------------------

    def clear(self, *, flush: bool = False) -> int:
        """Delete every key under the prefix on every shard (SCAN + UNLINK in batches) and
        return how many. ``flush=True`` empties every shard's database instead (FLUSHDB;
        returns 0): required without a prefix, and on memcache, which cannot list keys."""
        return self._sync(self._clear(flush))

    async def aclear(self, *, flush: bool = False) -> int:
        return await self._async(self._clear(flush))

    def _clear(self, flush: bool) -> Steps[int]:
        if flush or not self.prefix:
            if not flush:
                raise ConfigurationError(
                    "this cache has no prefix: clear() would empty every shard's database; "
                    "call clear(flush=True) to do that"
                )
            for shard in self.topology.shards():
                try:
                    yield (_EXEC, shard, (b"FLUSHDB",), None, False)
                except ShardUnavailableError as exc:
                    self._unavailable(exc, None)
            return 0
        pattern = _glob_escape(self.prefix) + b"*"
        removed = 0
        for shard in self.topology.shards():
            cursor: Any = b"0"
            try:
                while True:
                    scan = (b"SCAN", cursor, b"MATCH", pattern, b"COUNT", _SCAN_BATCH)
                    cursor, keys = yield (_EXEC, shard, scan, None, True)
                    if keys:
                        # One UNLINK per key: valid on a cluster too, where keys span slots.
                        replies = yield (_PIPE, shard, [(b"UNLINK", k) for k in keys])
                        removed += sum(r for r in replies if isinstance(r, int))
                    if cursor in (b"0", 0):
                        break
            except ShardUnavailableError as exc:
                self._unavailable(exc, None)
        return removed

    def close(self) -> None:
        """Close the topology's connections."""
        self.topology.close()


def _glob_escape(text: bytes) -> bytes:
    """``text`` as a literal in a SCAN MATCH pattern."""
    out = bytearray()
    for byte in text:
        if byte in _GLOB_SPECIAL:
            out.append(0x5C)  # backslash
        out.append(byte)
    return bytes(out)
