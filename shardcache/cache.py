"""The cache layer: one `Cache` over any topology.

Keys get the cache's prefix; values go through the `Codec` (plain integers, serializer,
compressor, signature); multi-key calls are grouped by shard, one pipeline per shard, every
shard's batch sent before any reply is read, so all shards work at once from one thread.
Each operation is written once as steps (`shardcache.drivers`) and says what it wants in
the topology's own dialect (Redis commands, memcache operations); what a topology cannot do
is asked of its declared capabilities before any I/O.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar, cast

from shardcache.codec import MAX_VALUE_SIZE, MISSING, Codec, Secret
from shardcache.compressors import COMPRESSORS, Compressor
from shardcache.config import resolve_strategy
from shardcache.deferred import Deferred
from shardcache.dialects import RedisDialect
from shardcache.drivers import (
    Compute,
    Exec,
    Failed,
    Fan,
    Pipe,
    Sleep,
    Steps,
    run_async,
    run_sync,
    scripted,
)
from shardcache.errors import (
    CommandError,
    ConfigurationError,
    CrossSlotError,
    InvalidKeyError,
    MissingKeyError,
    NotAnIntegerError,
    SerializationError,
    ShardError,
    ShardUnavailableError,
    key_text,
)
from shardcache.locks import Lock
from shardcache.logs import RateLimited
from shardcache.metrics import Metrics, ShardMetrics
from shardcache.near import CACHING, ENCODED, NearCache, Token, near_cache_of
from shardcache.protocols import (
    COMMANDS,
    LOCKS,
    SCAN,
    STATES,
    TTL,
    Command,
    Shard,
    Stateful,
    Topology,
)
from shardcache.serializers import SERIALIZERS, Serializer
from shardcache.stats import KeyLocation, ShardReport

__all__ = ["Cache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Key = str | bytes
KeyT = TypeVar("KeyT", bound=str | bytes)

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_SWAP_BUDGET = 30.0  # seconds a signed incr may spend losing compare-and-sets to other writers

_WARN_EVERY = 10.0  # seconds between two logged failures of one shard (ignore_errors)
_GLOB_SPECIAL = frozenset(b"*?[]\\")
_SCAN_BATCH = 1000


class Cache:
    """A cache over a sharded topology (`HashPool`, the cluster, sentinel and memcache
    topologies).

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

    With ``near_cache`` (True, a mapping of `NearCache` settings, or a `NearCache`) reads
    are kept in the process and served from it until the server says they changed (Redis
    only: see `shardcache.near`).

    A value that cannot be decoded is a miss plus a logged warning. With
    ``ignore_errors=True`` an unreachable shard is too: reads miss, writes return False,
    and one warning per shard per 10 s says so (none with ``log_ignored_errors=False``).
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
        log_ignored_errors: bool = True,
        metrics: bool = True,
        near_cache: bool | Mapping[str, Any] | NearCache | None = None,
    ) -> None:
        if not isinstance(topology, Topology):
            raise ConfigurationError(f"{topology!r} does not implement the shard protocol")
        self.topology = topology
        self.dialect = topology.dialect
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
        self.log_ignored_errors = log_ignored_errors
        # The topology's counters, shared by every Cache on it (one set per process).
        self.counters: Metrics | None = _counters_of(topology) if metrics else None
        self._quiet_until: dict[str, float] = {}
        self._unreadable = RateLimited(logger)  # shard -> when its failures are logged again
        self.near = near_cache_of(near_cache)
        if self.near is not None and not isinstance(self.dialect, RedisDialect):
            raise ConfigurationError(
                f"a near cache needs a server that says when a value changes (Redis CLIENT "
                f"TRACKING); {type(topology).__name__} has no such thing, and a near cache "
                f"over it would serve values the server has replaced"
            )
        # Stored-key prefixes of the keys the near cache keeps (every key when empty).
        self._near_prefixes = tuple(
            self.prefix + p for p in (self.near.prefixes if self.near is not None else ())
        )

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

    def _warn_unreadable(self, key: bytes, exc: SerializationError) -> None:
        # One line per 10 s: a server full of planted values must not flood the log.
        self._unreadable.warning(
            "unreadable",
            "shardcache: unreadable value under %s treated as a miss: %s",
            key_text(key),
            exc,
        )

    def _unavailable(self, exc: ShardUnavailableError, fallback: T) -> T:
        """The failure policy, the one place it is applied: an unreachable shard raises, or
        with ``ignore_errors`` gives ``fallback``, logged once per shard per period."""
        if not self.ignore_errors:
            raise exc
        now = time.monotonic()
        if self.log_ignored_errors and now >= self._quiet_until.get(exc.shard, 0.0):
            self._quiet_until[exc.shard] = now + _WARN_EVERY
            logger.warning(
                "shardcache: %s; ignored (ignore_errors=True), and so are this shard's "
                "failures for the next %gs",
                exc,
                _WARN_EVERY,
            )
        return fallback

    def _require(self, capability: str, what: str) -> None:
        if capability not in self.topology.capabilities:
            raise ConfigurationError(
                f"{what} needs the {capability!r} capability, "
                f"which {type(self.topology).__name__} does not have"
            )

    def _sync(self, steps: Steps[T]) -> T:
        return run_sync(steps, self.counters)

    async def _async(self, steps: Steps[T]) -> T:
        return await run_async(steps, self.counters)

    def metrics(self) -> dict[str, ShardMetrics]:
        """This process's counters of each shard (`shardcache.metrics.ShardMetrics`):
        operations, errors, timeouts and the latency histogram, for every `Cache` on the
        topology; empty with ``metrics=False``. ``shardcache.metrics.prometheus_text`` and
        ``register_prometheus(cache.counters)`` export them."""
        return {} if self.counters is None else self.counters.snapshot()

    def _run(self, key: bytes, fallback: Any, command: Command, read: bool = False) -> Steps[Any]:
        """One command on the shard of ``key``, under the failure policy. ``read`` commands
        are idempotent (retried once on a dead pooled connection) and may go to a replica
        when the topology is configured for replica reads."""
        near = None if read else self.near
        if near is not None:
            near.discard((key,))
        try:
            shard = self.topology.shard_for(key, read=read)
            return (yield Exec(shard, command, key, read))
        except ShardUnavailableError as exc:
            return self._unavailable(exc, fallback)
        finally:
            if near is not None:  # a read that raced this write is not kept either
                near.discard((key,))

    def _writing(self, keys: Sequence[bytes], steps: Steps[T]) -> Steps[T]:
        """``steps``, which write ``keys``: the near cache drops them before and after."""
        near = self.near
        if near is None:
            return (yield from steps)
        near.discard(keys)
        try:
            return (yield from steps)
        finally:
            near.discard(keys)

    @staticmethod
    def _px(ttl: float) -> int:
        return max(1, math.ceil(ttl * 1000))

    # --- single keys -----------------------------------------------------------------------

    def get(self, key: Key, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is missing or unreadable."""
        near = self.near
        if near is not None:
            k = self.make_key(key)
            if not self._near_prefixes or k.startswith(self._near_prefixes):
                entry = near.get(k)
                if entry is None:
                    if near.admits(k):
                        return self._sync(self._get_near(k, default))
                    return self._sync(self._get(key, default, k))  # first sight: not kept yet
                value = entry[4]
                return self._value(entry[0], k, default) if value is ENCODED else value
        return self._sync(self._get(key, default))

    async def aget(self, key: Key, default: Any = None) -> Any:
        near = self.near
        if near is not None:
            k = self.make_key(key)
            if not self._near_prefixes or k.startswith(self._near_prefixes):
                entry = near.get(k)
                if entry is None:
                    if near.admits(k):
                        return await self._async(self._get_near(k, default))
                    return await self._async(self._get(key, default, k))
                value = entry[4]
                return self._value(entry[0], k, default) if value is ENCODED else value
        return await self._async(self._get(key, default))

    def _value(self, raw: bytes, k: bytes, default: Any) -> Any:
        value = self._decode(raw, k, default)
        if value.__class__ is list and _is_envelope(value):
            return value[1]
        return value

    def _slot(self, k: bytes) -> int | None:
        """``k``'s cluster slot, which the near cache keeps with the entry (None elsewhere)."""
        topology: Any = self.topology
        if isinstance(topology, Deferred):
            topology = topology.built
        slot_of = getattr(topology, "slot", None)
        return None if slot_of is None else slot_of(k)

    def _get_near(self, k: bytes, default: Any) -> Steps[Any]:
        """A near-cache miss: the value and its TTL from the server, kept if nothing
        invalidated it meanwhile (`NearCache.store`)."""
        near = self.near
        assert near is not None
        try:
            shard = self.topology.shard_for(k, read=True)
        except ShardUnavailableError as exc:
            return self._unavailable(exc, default)
        leaf = shard.leaf()  # type: ignore[attr-defined]
        token = near.begin((k,), None if leaf is None else leaf.track())
        # Tracked (OPTIN), then the value and its TTL, in one round trip (a script doing
        # both would cost 4 µs of Lua on the server).
        read = [CACHING, (b"GET", k), (b"PTTL", k)]
        try:
            try:
                tracked, raw, pttl = yield Pipe(shard, read)
            except ShardUnavailableError as exc:
                if not exc.sent:
                    raise
                # Once more, as any read: the pooled connection may have gone stale (a
                # server restart). A timeout opened the breaker, so this fails at once.
                tracked, raw, pttl = yield Pipe(shard, read)
            if isinstance(raw, ShardError):
                raise raw
            if isinstance(tracked, ShardError) or isinstance(pttl, ShardError):
                pttl = None  # not tracked (the server refused it): read, but not kept
        except ShardUnavailableError as exc:
            near.abandon((k,), token)
            return self._unavailable(exc, default)
        except BaseException:
            near.abandon((k,), token)
            raise
        if raw is None or pttl is None:
            near.abandon((k,), token)
            return default if raw is None else self._value(raw, k, default)
        value = self._value(raw, k, ENCODED)  # ENCODED: unreadable, so not kept decoded
        near.store(k, raw, pttl, token, self._slot(k), value)
        return default if value is ENCODED else value

    def _get(self, key: Key, default: Any, made: bytes | None = None) -> Steps[Any]:
        # `_get_stored`'s body, inlined: one generator less on the hottest path. ``made``:
        # the stored key, when the caller has it already.
        k = self.make_key(key) if made is None else made
        raw = yield from self._run(k, None, self.dialect.get(k), read=True)
        if raw is None:
            return default
        value = self._decode(raw, k, default)
        if value.__class__ is list and _is_envelope(value):
            return value[1]  # written by get_or_compute: its value, without the envelope
        return value

    def _get_stored(self, key: Key, default: Any) -> Steps[Any]:
        k = self.make_key(key)
        raw = yield from self._run(k, None, self.dialect.get(k), read=True)
        return default if raw is None else self._decode(raw, k, default)

    def set(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` under ``key``; True when stored."""
        return self._sync(self._set(key, value, ttl))

    async def aset(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._async(self._set(key, value, ttl))

    def _set(self, key: Key, value: Any, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        if ttl is not None and ttl <= 0:
            yield from self._run(k, 0, self.dialect.delete((k,)))
            return True
        data = self.codec.encode(value, k)
        px = None if ttl is None else self._px(ttl)
        return (yield from self._run(k, None, self.dialect.set(k, data, px, False))) is not None

    def add(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent (atomic: usable as a lock); True if stored."""
        return self._sync(self._add(key, value, ttl))

    async def aadd(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._async(self._add(key, value, ttl))

    def _add(self, key: Key, value: Any, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        data = self.codec.encode(value, k)
        dialect = self.dialect
        if ttl is not None and ttl <= 0:  # as Django: say whether it would be added, keep none
            added = (yield from self._run(k, None, dialect.set(k, data, None, True))) is not None
            if added:
                yield from self._run(k, 0, dialect.delete((k,)))
            return added
        px = None if ttl is None else self._px(ttl)
        return (yield from self._run(k, None, dialect.set(k, data, px, True))) is not None

    def replace(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` exists (atomic); True if stored."""
        return self._sync(self._replace(key, value, ttl))

    async def areplace(self, key: Key, value: Any, ttl: float | None = None) -> bool:
        return await self._async(self._replace(key, value, ttl))

    def _replace(self, key: Key, value: Any, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        if ttl is not None and ttl <= 0:  # not kept: an existing key goes, as with set
            return bool((yield from self._run(k, 0, self.dialect.delete((k,)))))
        data = self.codec.encode(value, k)
        px = None if ttl is None else self._px(ttl)
        return (yield from self._run(k, None, self.dialect.replace(k, data, px))) is not None

    def delete(self, key: Key) -> bool:
        """Remove ``key``; True if it existed."""
        return self._sync(self._delete(key))

    async def adelete(self, key: Key) -> bool:
        return await self._async(self._delete(key))

    def _delete(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        return bool((yield from self._run(k, 0, self.dialect.delete((k,)))))

    def has(self, key: Key) -> bool:
        """Whether ``key`` exists."""
        return self._sync(self._has(key))

    async def ahas(self, key: Key) -> bool:
        return await self._async(self._has(key))

    def _has(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        return bool((yield from self._run(k, 0, self.dialect.exists(k), read=True)))

    def incr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        """Add ``delta`` to the integer under ``key`` atomically on the server and return the
        new value. A missing key raises `MissingKeyError` (a ValueError), or with ``create``
        starts at 0 (and never expires, as INCRBY's). A value that is not an integer raises
        `NotAnIntegerError` (a TypeError)."""
        return self._sync(self._writing((self.make_key(key),), self._incr(key, delta, create)))

    async def aincr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        return await self._async(
            self._writing((self.make_key(key),), self._incr(key, delta, create))
        )

    def decr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        """`incr` by ``-delta``."""
        return self._sync(self._writing((self.make_key(key),), self._incr(key, -delta, create)))

    async def adecr(self, key: Key, delta: int = 1, *, create: bool = False) -> int:
        return await self._async(
            self._writing((self.make_key(key),), self._incr(key, -delta, create))
        )

    def _incr(self, key: Key, delta: int, create: bool) -> Steps[int]:
        k = self.make_key(key)
        if self.codec.signed or not _INT64_MIN <= delta <= _INT64_MAX:
            return (yield from self._incr_by_swap(key, k, delta, create))
        result: Any
        try:
            shard = self.topology.shard_for(k)
            if create:
                result = yield Exec(shard, self.dialect.incrby(k, delta), k, False)
            else:
                result = yield from scripted(
                    shard, k, self.dialect.incr_existing(k, delta), self.dialect
                )
        except CommandError as exc:
            if "overflow" in str(exc) or "not an integer" in str(exc):
                # Past the server's 64-bit counters (2**63 stored, or a sum beyond it), or
                # not an integer at all: Python's integers have no limit, and the swap
                # path tells the two apart.
                return (yield from self._incr_by_swap(key, k, delta, create))
            raise
        except ShardUnavailableError as exc:
            self._unavailable(exc, None)
            result = None
        if result is None:
            raise MissingKeyError(f"key {key_text(key)} not found")
        return int(result)

    def _incr_by_swap(self, key: Key, k: bytes, delta: int, create: bool) -> Steps[int]:
        # The server cannot add: it cannot sign, or the numbers are past its 64-bit
        # counters. Read and check the counter, then swap in the new one only if nobody
        # changed it meanwhile (else read again).
        deadline = time.monotonic() + _SWAP_BUDGET
        absent = 0
        try:
            shard = self.topology.shard_for(k)
            while True:
                raw = yield Exec(shard, self.dialect.get(k), k, True)
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
                    done = yield Exec(shard, self.dialect.set(k, data, None, True), k, False)
                    absent = 0 if done else absent + 1
                    if absent > 1:  # NX keeps failing on a key that reads as absent
                        raise MissingKeyError(f"key {key_text(key)} cannot be created here")
                else:
                    done = yield from scripted(
                        shard, k, self.dialect.swap(k, raw, data), self.dialect
                    )
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

    def touch(self, key: Key, ttl: float | None = None) -> bool:
        """Give ``key`` a new time to live (``None``: no expiry); True if the key exists."""
        return self._sync(self._touch(key, ttl))

    async def atouch(self, key: Key, ttl: float | None = None) -> bool:
        return await self._async(self._touch(key, ttl))

    def _touch(self, key: Key, ttl: float | None) -> Steps[bool]:
        k = self.make_key(key)
        if ttl is not None and ttl <= 0:
            return bool((yield from self._run(k, 0, self.dialect.delete((k,)))))
        if ttl is None:
            return (yield from self._persist(key))
        return bool((yield from self._run(k, 0, self.dialect.pexpire(k, self._px(ttl)))))

    def expire(self, key: Key, ttl: float | None) -> bool:
        """`touch`, under django-redis's name."""
        return self.touch(key, ttl)

    async def aexpire(self, key: Key, ttl: float | None) -> bool:
        return await self._async(self._touch(key, ttl))

    def persist(self, key: Key) -> bool:
        """Remove ``key``'s expiry; True if the key exists."""
        return self._sync(self._persist(key))

    async def apersist(self, key: Key) -> bool:
        return await self._async(self._persist(key))

    def _persist(self, key: Key) -> Steps[bool]:
        k = self.make_key(key)
        if self.near is not None:
            self.near.discard((k,))  # its TTL changes: the entry's expiry would be wrong
        try:
            shard = self.topology.shard_for(k)
            replies = yield Pipe(shard, self.dialect.persist(k))
        except ShardUnavailableError as exc:
            return self._unavailable(exc, False)
        return bool(replies[-1])

    def command(
        self, name: str | bytes, *args: Any, keys: int = 1, read: bool = False, default: Any = None
    ) -> Any:
        """Any Redis command on the shard of its keys, under the failure policy: the first
        ``keys`` arguments are cache keys (prefixed like every other key, and on one shard),
        the rest go as they are; the reply is redis-py's, undecoded (``default`` when an
        unreachable shard is ignored). ``read`` commands may be retried once on a stale
        connection and go to a replica with replica reads on.

            cache.command("HSET", "user:1", b"name", b"Ada")
            cache.command("SINTER", "{tags}:a", "{tags}:b", keys=2)
        """
        return self._sync(self._command(name, args, keys, read, default))

    async def acommand(
        self, name: str | bytes, *args: Any, keys: int = 1, read: bool = False, default: Any = None
    ) -> Any:
        return await self._async(self._command(name, args, keys, read, default))

    def _command(
        self, name: str | bytes, args: Sequence[Any], keys: int, read: bool, default: Any
    ) -> Steps[Any]:
        self._require(COMMANDS, "command()")
        if not 1 <= keys <= len(args):
            raise ValueError(f"command(): keys={keys}, but {len(args)} arguments follow the name")
        made = [self.make_key(key) for key in args[:keys]]
        topology = self.topology
        if len(made) > 1:  # compared on the masters: replica reads pick a replica at random
            home = topology.shard_for(made[0])
            if any(topology.shard_for(other) is not home for other in made[1:]):
                raise CrossSlotError(
                    f"{name!r}: the keys {[key_text(k) for k in made]} are on different shards "
                    "(keys sharing a {hash tag} share a cluster slot)"
                )
        shard = topology.shard_for(made[0], read=read)
        command = (name, *made, *args[keys:])
        steps = self._command_on(shard, command, made[0], read, default)
        return (yield from (steps if read else self._writing(made, steps)))

    def _command_on(
        self, shard: Shard, command: Command, key: bytes, read: bool, default: Any
    ) -> Steps[Any]:
        try:
            return (yield Exec(shard, command, key, read))
        except ShardUnavailableError as exc:
            return self._unavailable(exc, default)

    def stats(self) -> list[ShardReport]:
        """A `shardcache.stats.ShardReport` of every server of the topology (replicas too):
        reachable or not, the round trip, keys, memory, hits, misses, evictions, the
        breaker, and the slots, sentinel name or memcache state it serves."""
        reports = getattr(self.topology, "reports", None)
        if reports is None:
            raise ConfigurationError(f"{type(self.topology).__name__} gives no stats")
        return list(reports())

    def where(self, key: Key) -> KeyLocation:
        """Where ``key`` lives (`shardcache.stats.KeyLocation`): the shard and server its
        stored key routes to, its cluster slot, and whether the server holds it, with its
        time to live and stored size."""
        k = self.make_key(key)
        shard = self.topology.shard_for(k)
        leaf = getattr(shard, "leaf", None)
        server = leaf() if callable(leaf) else None
        slot = getattr(self.topology, "slot", None)
        raw = self._sync(self._run(k, None, self.dialect.get(k), read=True))
        ttl = self.ttl(key) if raw is not None and TTL in self.topology.capabilities else None
        return KeyLocation(
            key=k.decode(errors="backslashreplace"),
            shard=shard.id,
            address=getattr(server, "id", shard.id),
            slot=slot(k) if callable(slot) else None,
            exists=raw is not None,
            ttl=ttl,
            size=None if raw is None else len(raw),
        )

    def redis_client(self, key: Key | None = None) -> Any:
        """A redis-py client, for what this API does not cover: on the server holding
        ``key``; without a key, a cluster's own `redis.cluster.RedisCluster`, or the one
        server or master there is (with several, `ConfigurationError`: pass a key). On a
        sentinel master it is the master of the moment: get a new one after a failover."""
        self._require(COMMANDS, "redis_client()")
        topology = self.topology
        if key is not None:
            return topology.shard_for(self.make_key(key)).client()
        whole = getattr(topology, "redis", None)
        if whole is not None:
            return whole()
        shards = topology.shards()
        if len(shards) != 1:
            raise ConfigurationError(
                f"redis_client(): {len(shards)} servers here; pass the key whose server you want"
            )
        return shards[0].client()

    def get_or_compute(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: float,
        *,
        beta: float = 1.0,
        stale: float | None = None,
        wait: float = 10.0,
        lock_timeout: float | None = None,
    ) -> Any:
        """The value under ``key``, computed by ``compute()`` and kept ``ttl`` seconds when
        missing, with stampede protection:

        - **one caller computes** (an add-as-lock on ``key``, ``lock_timeout`` seconds, by
          default ``wait``); the others are given the previous value while it is kept
          (``stale`` seconds past ``ttl``, by default ``ttl``), or wait for the new one at
          most ``wait`` seconds, after which they compute it themselves;
        - **probabilistic early recomputation** (XFetch, Vattani et al., VLDB 2015): the
          value is stored with how long it took to compute, and each read recomputes it
          ahead of expiry with a probability that rises as expiry nears (``beta``: 1.0 as
          in the paper, higher is earlier, 0 never early).

        The stored value is an envelope of its own: read it with `get_or_compute` only."""
        return self._sync(self._get_or_compute(key, compute, ttl, beta, stale, wait, lock_timeout))

    async def aget_or_compute(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: float,
        *,
        beta: float = 1.0,
        stale: float | None = None,
        wait: float = 10.0,
        lock_timeout: float | None = None,
    ) -> Any:
        """`get_or_compute` on asyncio; ``compute`` may return an awaitable."""
        steps = self._get_or_compute(key, compute, ttl, beta, stale, wait, lock_timeout)
        return await self._async(steps)

    def _get_or_compute(
        self,
        key: Key,
        compute: Callable[[], Any],
        ttl: float,
        beta: float,
        stale: float | None,
        wait: float,
        lock_timeout: float | None,
    ) -> Steps[Any]:
        if ttl <= 0:
            raise ValueError("get_or_compute needs a positive ttl (seconds)")
        lock = (key.encode() if isinstance(key, str) else key) + b":stampede-lock"
        keep = ttl + (ttl if stale is None else stale)
        deadline = time.monotonic() + wait
        while True:
            envelope = _opened((yield from self._get_stored(key, MISSING)))
            if envelope is not None:
                value, delta, expires = envelope
                # XFetch: early by delta * beta * -ln(U), U uniform in (0, 1].
                early = delta * beta * -math.log(1.0 - random.random()) if beta > 0 else 0.0
                if time.time() + early < expires:
                    return value
            if (yield from self._add(lock, os.urandom(8).hex(), lock_timeout or wait)):
                # Another caller may have stored a new value between our read and the lock.
                again = _opened((yield from self._get_stored(key, MISSING)))
                if again is not None and (envelope is None or again[2] != envelope[2]):
                    yield from self._delete(lock)
                    return again[0]
                try:
                    value = yield from self._compute_and_store(key, compute, ttl, keep)
                except GeneratorExit:
                    raise  # abandoned (a cancelled task): the lock lapses on its own
                except BaseException:
                    yield from self._delete(lock)
                    raise
                yield from self._delete(lock)
                return value
            if envelope is not None:
                return envelope[0]  # another caller recomputes: the value we have will do
            if time.monotonic() >= deadline:  # waited long enough: compute it here
                return (yield from self._compute_and_store(key, compute, ttl, keep))
            yield Sleep(0.01)

    def _compute_and_store(
        self, key: Key, compute: Callable[[], Any], ttl: float, keep: float
    ) -> Steps[Any]:
        began = time.monotonic()
        value = yield Compute(compute)
        if isinstance(value, Failed):
            raise value.error
        delta = time.monotonic() - began
        yield from self._set(key, [_ENVELOPE, value, delta, time.time() + ttl], keep)
        return value

    def ttl(self, key: Key) -> float | None:
        """Seconds left before ``key`` expires; ``None`` if it never does; 0.0 if it is missing."""
        return self._sync(self._ttl(key))

    async def attl(self, key: Key) -> float | None:
        return await self._async(self._ttl(key))

    def _ttl(self, key: Key) -> Steps[float | None]:
        self._require(TTL, "ttl()")
        k = self.make_key(key)
        ms = yield from self._run(k, -2, self.dialect.pttl(k), read=True)
        if ms == -1:
            return None
        return max(0.0, float(ms) / 1000)

    def lock(
        self,
        key: Key,
        timeout: float | None = None,
        blocking_timeout: float | None = None,
        sleep: float = 0.1,
        *,
        blocking: bool = True,
    ) -> Lock:
        """A `Lock` named ``key`` on the shard of ``key``: ``with cache.lock(...)`` or
        ``async with cache.alock(...)``; ``acquire``/``release``/``extend`` and their async
        twins (``aacquire``...). ``blocking=False``: `acquire` tries once."""
        self._require(LOCKS, "lock()")
        k = self.make_key(key)
        return Lock(
            self.topology.shard_for(k),
            k,
            timeout=timeout,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            sleep=sleep,
        )

    alock = lock  # the same `Lock`: it has both APIs, and making one does no I/O

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
        if self.near is not None:
            return (yield from self._get_many_near(originals, made))
        try:
            groups = self.topology.group(made, read=True)
        except ShardUnavailableError as exc:  # e.g. no slot map yet (`shardcache.deferred`)
            return self._unavailable(exc, {})
        mget = self.dialect.mget
        commands = {shard: [mget(run) for run in runs] for shard, runs in groups.items()}
        found: dict[bytes, bytes] = {}
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield Fan(commands)
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
            original: value[1] if value.__class__ is list and _is_envelope(value) else value
            for original, value in zip(originals, values, strict=True)
            if value is not MISSING
        }

    def _get_many_near(self, originals: list[KeyT], made: list[bytes]) -> Steps[dict[KeyT, Any]]:
        """`get_many` with a near cache: hits from it; the misses from their servers, one
        pipeline per shard (MGET and each key's PTTL per slot)."""
        near = self.near
        assert near is not None
        prefixes = self._near_prefixes
        values: dict[bytes, Any] = {}  # decoded, or ENCODED until decoded below
        raws: dict[bytes, bytes] = {}
        missing: list[bytes] = []
        if not prefixes:
            entries = near.get_many(made)
            if None not in entries and not any(e[4] is ENCODED for e in entries):  # type: ignore[index]
                # Every key held, every value immutable: the hot path.
                return {o: e[4] for o, e in zip(originals, entries, strict=True)}  # type: ignore[index]
            held = dict(zip(made, entries, strict=True))
        else:
            wanted = [k for k in made if k.startswith(prefixes)]
            held = dict(zip(wanted, near.get_many(wanted), strict=True))
        for k in made:
            entry = held.get(k)
            if entry is None:
                missing.append(k)
            else:
                values[k] = entry[4]
                if entry[4] is ENCODED:
                    raws[k] = entry[0]
        fetched: list[tuple[bytes, bytes | None, int | None, Token | None]] = []
        if missing:
            admits = near.admits
            kept = frozenset(
                k for k in missing if (not prefixes or k.startswith(prefixes)) and admits(k)
            )
            try:
                groups = self.topology.group(missing, read=True)
            except ShardUnavailableError as exc:
                groups = {}
                self._unavailable(exc, None)
            yield from self._read_near(groups, kept, fetched)
            for k, raw, _, _ in fetched:
                if raw is not None:
                    values[k] = ENCODED
                    raws[k] = raw
        if raws:
            decoded = self.codec.decode_batch(
                list(raws.values()), list(raws), self._warn_unreadable
            )
            for k, value in zip(raws, decoded, strict=True):
                values[k] = value[1] if value.__class__ is list and _is_envelope(value) else value
        for k, raw, pttl, token in fetched:
            if token is not None and pttl is not None:
                value = values.get(k, MISSING)
                shared = ENCODED if value is MISSING else value
                near.store(k, raw, pttl, token, self._slot(k), shared)
        return {
            original: value
            for original, k in zip(originals, made, strict=True)
            if (value := values.get(k, MISSING)) is not MISSING and value is not ENCODED
        }

    def _read_near(
        self,
        groups: dict[Shard, list[list[bytes]]],
        kept: frozenset[bytes],
        fetched: list[tuple[bytes, bytes | None, int | None, Token | None]],
    ) -> Steps[None]:
        """Read ``groups`` from their servers, with the TTLs of the keys to be ``kept``, into
        ``fetched`` as ``(key, raw, pttl, token)`` (for `NearCache.store` once decoded; the
        TTL and token are None for a key not kept)."""
        near = self.near
        assert near is not None
        tokens = {}
        for shard, runs in groups.items():
            leaf = shard.leaf()  # type: ignore[attr-defined]
            tracker = None if leaf is None else leaf.track()
            tokens[shard] = near.begin([k for run in runs for k in run if k in kept], tracker)
        # Per run (the keys of one shard or slot): MGET, tracked (OPTIN) when it holds a
        # key to keep, then the PTTL of each key kept.
        mget = self.dialect.mget
        commands: dict[Shard, list[Command]] = {}
        for shard, runs in groups.items():
            batch = commands[shard] = []
            for run in runs:
                timed = [k for k in run if k in kept]
                batch += [CACHING, mget(run)] if timed else [mget(run)]
                batch += [(b"PTTL", k) for k in timed]
        try:
            outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield Fan(commands)
        except BaseException:
            for token in tokens.values():
                near.abandon(kept, token)
            raise
        for shard, replies in outcome.items():
            token = tokens[shard]
            if isinstance(replies, ShardUnavailableError):
                near.abandon(kept, token)
                self._unavailable(replies, None)
                continue
            at = 0
            for run in groups[shard]:
                timed = [k for k in run if k in kept]
                untracked = bool(timed) and isinstance(replies[at], ShardError)
                at += bool(timed)  # CLIENT CACHING's reply: an error only says "not kept"
                values = replies[at]
                if isinstance(values, ShardError):
                    near.abandon(kept, token)
                    raise values
                ttls = {} if untracked else dict(zip(timed, replies[at + 1 :], strict=False))
                for k, raw in zip(run, values, strict=True):
                    pttl = ttls.get(k)
                    keep = isinstance(pttl, int)  # None, or an error reply: not kept
                    fetched.append((k, raw, pttl if keep else None, token if keep else None))
                at += 1 + len(timed)

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
        if self.near is not None:
            return (yield from self._writing(made, self._set_made(mapping, originals, made, ttl)))
        return (yield from self._set_made(mapping, originals, made, ttl))

    def _set_made(
        self,
        mapping: Mapping[KeyT, Any],
        originals: list[KeyT],
        made: list[bytes],
        ttl: float | None,
    ) -> Steps[list[KeyT]]:
        original_of = dict(zip(made, originals, strict=True))
        encode = self.codec.encode
        encoded = {k: encode(mapping[o], k) for k, o in original_of.items()}
        try:
            groups = self.topology.group(made)
        except ShardUnavailableError as exc:
            return self._unavailable(exc, list(originals))
        px = None if ttl is None else self._px(ttl)
        set_ = self.dialect.set
        commands = {
            shard: [set_(k, encoded[k], px, False) for run in runs for k in run]
            for shard, runs in groups.items()
        }
        failed: list[KeyT] = []
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield Fan(commands)
        for shard, replies in outcome.items():
            keys = [k for run in groups[shard] for k in run]
            if isinstance(replies, ShardUnavailableError):
                self._unavailable(replies, None)
                failed += [original_of[k] for k in keys]
                continue
            failed += [
                original_of[k]
                for k, ok in zip(keys, replies, strict=True)
                if ok is None or isinstance(ok, ShardError)
            ]
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
        if self.near is not None:
            return (yield from self._writing(made, self._delete_made(made)))
        return (yield from self._delete_made(made))

    def _delete_made(self, made: list[bytes]) -> Steps[int]:
        try:
            groups = self.topology.group(made)
        except ShardUnavailableError as exc:
            return self._unavailable(exc, 0)
        delete = self.dialect.delete
        commands = {shard: [delete(run) for run in runs] for shard, runs in groups.items()}
        deleted = 0
        outcome: dict[Shard, list[Any] | ShardUnavailableError] = yield Fan(commands)
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
        near = self.near
        if near is not None:
            near.flush()
        try:
            return (yield from self._clear_servers(flush))
        finally:
            if near is not None:
                near.flush()

    def _clear_servers(self, flush: bool) -> Steps[int]:
        if not flush and not self.prefix:
            raise ConfigurationError(
                "this cache has no prefix: clear() would empty every shard's database; "
                "call clear(flush=True) to do that"
            )
        if not flush:
            self._require(SCAN, "clear() of one prefix (call clear(flush=True) to empty them)")
        try:
            shards = self.topology.shards()
        except ShardUnavailableError as exc:
            return self._unavailable(exc, 0)
        if flush:
            for shard in shards:
                try:
                    yield Exec(shard, self.dialect.flush(), None, False)
                except ShardUnavailableError as exc:
                    self._unavailable(exc, None)
            return 0
        pattern = _glob_escape(self.prefix) + b"*"
        removed = 0
        for shard in shards:
            cursor: Any = b"0"
            try:
                while True:
                    scan = (b"SCAN", cursor, b"MATCH", pattern, b"COUNT", _SCAN_BATCH)
                    cursor, keys = yield Exec(shard, scan, None, True)
                    if keys:
                        # One UNLINK per key: valid on a cluster too, where keys span slots.
                        replies = yield Pipe(shard, [(b"UNLINK", k) for k in keys])
                        removed += sum(r for r in replies if isinstance(r, int))
                    if cursor in (b"0", 0):
                        break
            except ShardUnavailableError as exc:
                self._unavailable(exc, None)
        return removed

    def update_shard_states(self, states: Sequence[Any]) -> None:
        """Give the topology's shards new states at run time (memcache: one `ShardState` or
        name per shard, in order); every thread of the process sees them on its next call."""
        self._require(STATES, "update_shard_states()")
        cast(Stateful, self.topology).update_shard_states(states)

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


_COUNTERS_LOCK = threading.Lock()


def _counters_of(topology: Any) -> Metrics:
    with _COUNTERS_LOCK:
        found = getattr(topology, "counters", None)
        if not isinstance(found, Metrics):
            found = Metrics()
            topology.counters = found
        return found


_ENVELOPE = "shardcache:computed"  # [_ENVELOPE, value, compute seconds, fresh until (epoch)]


def _is_envelope(value: list[Any]) -> bool:
    return len(value) == 4 and value[0] == _ENVELOPE


def _opened(found: Any) -> tuple[Any, float, float] | None:
    if (
        isinstance(found, list | tuple)
        and len(found) == 4
        and found[0] == _ENVELOPE
        and isinstance(found[2], int | float)
        and isinstance(found[3], int | float)
    ):
        return found[1], float(found[2]), float(found[3])
    return None
