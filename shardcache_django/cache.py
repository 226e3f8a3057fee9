"""Django ``CACHES`` backends, one per topology. They only make keys, convert timeouts and
return values the way Django's own backends do; every behaviour lives in `shardcache.Cache`.

    CACHES = {"default": {
        "BACKEND": "shardcache_django.cache.RedisClusterCache",
        "LOCATION": ["redis://node-a:7000", "redis://node-b:7001"],
        "OPTIONS": {"READ_FROM_REPLICAS": False, "COMPRESSOR": "zstd"},
    }}
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

from django.conf import settings
from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    MEMCACHE_MAX_KEY_LENGTH,
    BaseCache,
    InvalidCacheKey,
    default_key_func,
    memcache_key_warnings,
)
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from shardcache import Cache, Lock, ShardState
from shardcache.backends import stampede_options
from shardcache.cache import _glob_escape
from shardcache.errors import ConfigurationError
from shardcache.protocols import SCAN
from shardcache.registry import registry
from shardcache_django.structures import RedisStructures

__all__ = ["RedisClusterCache", "RedisSentinelCache", "ShardedMemcacheCache", "ShardedRedisCache"]

# django-redis's settings for every cache, applied unless an entry sets its own option.
_GLOBAL_SWITCHES = {
    "DJANGO_REDIS_IGNORE_EXCEPTIONS": frozenset({"IGNORE_ERRORS", "IGNORE_EXCEPTIONS"}),
    "DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS": frozenset(
        {"LOG_IGNORED_ERRORS", "LOG_IGNORED_EXCEPTIONS"}
    ),
}
_SCAN_COUNT = 1000  # keys per SCAN round trip unless ``itersize`` says otherwise


class _ShardcacheCache(BaseCache):
    """What the four backends share; ``kind`` picks the topology."""

    kind: ClassVar[str]

    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(params)
        self._location = server
        self._options = options = dict(params.get("OPTIONS") or {})
        # django-redis's project-wide switches, unless the entry says otherwise.
        for setting, names in _GLOBAL_SWITCHES.items():
            if getattr(settings, setting, None) is not None and not names & options.keys():
                options[min(names)] = bool(getattr(settings, setting))
        try:
            self._stampede = stampede_options(options.get("STAMPEDE"))
        except ValueError:
            raise ImproperlyConfigured(f"{type(self).__name__}: bad OPTIONS['STAMPEDE']") from None
        near = options.get("NEAR_CACHE")
        if isinstance(near, Mapping) and near.get("PREFIXES"):
            # Prefixes of the keys users pass; the near cache sees the keys Django makes.
            given = near["PREFIXES"]
            given = [given] if isinstance(given, str) else list(given)
            options["NEAR_CACHE"] = {**near, "PREFIXES": [self.make_key(p) for p in given]}
        reverse = params.get("REVERSE_KEY_FUNCTION")
        self.reverse_key_func: Callable[[str], str] | None = (
            import_string(reverse) if isinstance(reverse, str) else reverse
        )
        self._core: Cache | None = None

    @property
    def core(self) -> Cache:
        """The process-wide cache of this entry (`shardcache.registry`): Django makes one
        backend object per thread and per ASGI request, and they all share one topology,
        built on first use. A bad entry raises ImproperlyConfigured."""
        core = self._core
        if core is None:
            try:
                core = registry.cache(self.kind, self._location, self._options)
            except ConfigurationError as exc:
                raise ImproperlyConfigured(f"{type(self).__name__}: {exc}") from exc
            self._core = core
        return core

    def validate_key(self, key: str) -> None:
        # Django's check walks the key in Python, character by character: for get_many(100)
        # that costs more than the round trip. Keys that are plainly safe skip it.
        if not _plainly_safe(key):
            super().validate_key(key)

    def _ttl(self, timeout: Any) -> float | None:
        # Django: DEFAULT_TIMEOUT = the configured default, None = forever, 0 or less = do
        # not keep. The core reads ttl <= 0 the same way.
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    # --- BaseCache ------------------------------------------------------------------------

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        return self.core.add(self.make_and_validate_key(key, version), value, self._ttl(timeout))

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self.core.get(self.make_and_validate_key(key, version), default)

    def set(
        self,
        key: Any,
        value: Any,
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        *,
        nx: bool = False,
        xx: bool = False,
    ) -> bool | None:
        """Django's ``set`` (returns None); with django-redis's ``nx=True`` only if the key
        is absent, ``xx=True`` only if present, and then whether it was stored."""
        made = self.make_and_validate_key(key, version)
        if nx and xx:
            raise ValueError("set(): nx and xx exclude each other")
        if nx:
            return self.core.add(made, value, self._ttl(timeout))
        if xx:
            return self.core.replace(made, value, self._ttl(timeout))
        self.core.set(made, value, self._ttl(timeout))
        return None

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return self.core.touch(self.make_and_validate_key(key, version), self._ttl(timeout))

    def delete(self, key: Any, version: Any = None) -> bool:
        return self.core.delete(self.make_and_validate_key(key, version))

    def get_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version): key for key in keys}
        return {made[k]: value for k, value in self.core.get_many(list(made)).items()}

    def has_key(self, key: Any, version: Any = None) -> bool:
        return self.core.has(self.make_and_validate_key(key, version))

    def incr(
        self, key: Any, delta: int = 1, version: Any = None, *, ignore_key_check: bool = False
    ) -> int:
        """Django's ``incr`` (a missing key is a ValueError); with django-redis's
        ``ignore_key_check=True`` a missing key starts at 0."""
        made = self.make_and_validate_key(key, version)
        return self.core.incr(made, delta, create=ignore_key_check)

    def decr(
        self, key: Any, delta: int = 1, version: Any = None, *, ignore_key_check: bool = False
    ) -> int:
        made = self.make_and_validate_key(key, version)
        return self.core.incr(made, -delta, create=ignore_key_check)

    def set_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        made = {self.make_and_validate_key(key, version): key for key in data}
        failed = self.core.set_many({k: data[o] for k, o in made.items()}, self._ttl(timeout))
        return [made[k] for k in failed]

    def delete_many(self, keys: Iterable[Any], version: Any = None) -> int:
        """Delete ``keys``; how many existed (django-redis's answer; Django ignores it)."""
        made = [self.make_and_validate_key(key, version) for key in keys]
        return self.core.delete_many(made) if made else 0

    def clear(self) -> None:
        """With a KEY_PREFIX and the default KEY_FUNCTION, only this prefix's keys go; else
        every database of the cache is emptied, as Django's RedisCache does."""
        if self._clears_by_prefix():
            Cache(self.core.topology, prefix=f"{self.key_prefix}:").clear()
            if self.core.near is not None:
                self.core.near.flush()  # those keys were this backend's: none is left
        else:
            self.core.clear(flush=True)

    def _clears_by_prefix(self) -> bool:
        return (
            bool(self.key_prefix)
            and self.key_func is default_key_func
            and SCAN in self.core.topology.capabilities
        )

    # --- stampede protection ------------------------------------------------------------------

    def get_or_compute(
        self,
        key: Any,
        compute: Callable[[], Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        **options: float,
    ) -> Any:
        """`shardcache.Cache.get_or_compute`: one caller computes a missing or expiring
        value, the others get the previous one or wait (bounded), and XFetch recomputes
        ahead of expiry. ``options`` (``beta``, ``stale``, ``wait``, ``lock_timeout``)
        override ``OPTIONS["STAMPEDE"]``'s."""
        made, ttl, settings = self._computing(key, timeout, version, options)
        return self.core.get_or_compute(made, compute, ttl, **settings)

    async def aget_or_compute(
        self,
        key: Any,
        compute: Callable[[], Any],
        timeout: Any = DEFAULT_TIMEOUT,
        version: Any = None,
        **options: float,
    ) -> Any:
        made, ttl, settings = self._computing(key, timeout, version, options)
        return await self.core.aget_or_compute(made, compute, ttl, **settings)

    def _computing(
        self, key: Any, timeout: Any, version: Any, options: dict[str, float]
    ) -> tuple[str, float, dict[str, float]]:
        """The stored key, the ttl and the settings of a `get_or_compute`."""
        if not self._protects(timeout):
            raise ValueError("get_or_compute needs a positive timeout (seconds)")
        ttl: float = self._ttl(timeout)  # type: ignore[assignment]
        made = self.make_and_validate_key(key, version)
        return made, ttl, {**(self._stampede or {}), **options}

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> Any:
        """Django's ``get_or_set``; with ``OPTIONS["STAMPEDE"]`` and a callable default
        and a positive timeout, `get_or_compute` (one caller computes)."""
        if self._stampede is not None and callable(default) and self._protects(timeout):
            return self.get_or_compute(key, default, timeout, version)
        return super().get_or_set(key, default, timeout, version)

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> Any:
        if self._stampede is not None and callable(default) and self._protects(timeout):
            return await self.aget_or_compute(key, default, timeout, version)
        return await super().aget_or_set(key, default, timeout, version)

    def _protects(self, timeout: Any) -> bool:
        ttl = self._ttl(timeout)
        return ttl is not None and ttl > 0

    def close(self, **kwargs: Any) -> None:
        # Django calls this at the end of every request: the shared topology outlives it
        # (`core.close()` closes it for the whole process).
        pass

    # --- the async API: natively on asyncio (redis-py's asyncio connections), except on
    # memcache, whose client has none: there the core runs each command in a thread ---------

    async def aadd(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> bool:
        made = self.make_and_validate_key(key, version)
        return await self.core.aadd(made, value, self._ttl(timeout))

    async def aget(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return await self.core.aget(self.make_and_validate_key(key, version), default)

    async def aset(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        await self.core.aset(self.make_and_validate_key(key, version), value, self._ttl(timeout))

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> bool:
        return await self.core.atouch(self.make_and_validate_key(key, version), self._ttl(timeout))

    async def adelete(self, key: Any, version: Any = None) -> bool:
        return await self.core.adelete(self.make_and_validate_key(key, version))

    async def aget_many(self, keys: Iterable[Any], version: Any = None) -> dict[Any, Any]:
        made = {self.make_and_validate_key(key, version): key for key in keys}
        return {made[k]: value for k, value in (await self.core.aget_many(list(made))).items()}

    async def ahas_key(self, key: Any, version: Any = None) -> bool:
        return await self.core.ahas(self.make_and_validate_key(key, version))

    async def aincr(
        self, key: Any, delta: int = 1, version: Any = None, *, ignore_key_check: bool = False
    ) -> int:
        made = self.make_and_validate_key(key, version)
        return await self.core.aincr(made, delta, create=ignore_key_check)

    async def adecr(
        self, key: Any, delta: int = 1, version: Any = None, *, ignore_key_check: bool = False
    ) -> int:
        made = self.make_and_validate_key(key, version)
        return await self.core.aincr(made, -delta, create=ignore_key_check)

    async def aset_many(
        self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> list[Any]:
        made = {self.make_and_validate_key(key, version): key for key in data}
        mapping = {k: data[o] for k, o in made.items()}
        return [made[k] for k in await self.core.aset_many(mapping, self._ttl(timeout))]

    async def adelete_many(self, keys: Iterable[Any], version: Any = None) -> int:
        made = [self.make_and_validate_key(key, version) for key in keys]
        return await self.core.adelete_many(made) if made else 0

    async def aclear(self) -> None:
        if self._clears_by_prefix():
            await Cache(self.core.topology, prefix=f"{self.key_prefix}:").aclear()
        else:
            await self.core.aclear(flush=True)

    async def aclose(self, **kwargs: Any) -> None:
        pass  # as `close`

    # --- what django-redis users rely on -----------------------------------------------------

    def ttl(self, key: Any, version: Any = None) -> int | None:
        """Whole seconds left (rounded, as Redis's TTL); None for a key that never
        expires; 0 for a missing key."""
        seconds = self.core.ttl(self.make_and_validate_key(key, version))
        return None if seconds is None else round(seconds)

    def pttl(self, key: Any, version: Any = None) -> int | None:
        """Milliseconds left; None for a key that never expires; 0 for a missing key."""
        seconds = self.core.ttl(self.make_and_validate_key(key, version))
        return None if seconds is None else round(seconds * 1000)

    def expire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """A new time to live in seconds (None: never expires); True if the key exists."""
        return self.core.expire(self.make_and_validate_key(key, version), self._ttl(timeout))

    def pexpire(self, key: Any, timeout: Any, version: Any = None) -> bool:
        """A new time to live in milliseconds (``DEFAULT_TIMEOUT``: the cache's default);
        True if the key exists."""
        seconds = self._ttl(timeout) if timeout is DEFAULT_TIMEOUT else timeout / 1000
        return self.core.expire(self.make_and_validate_key(key, version), seconds)

    def expire_at(self, key: Any, when: dt.datetime | float, version: Any = None) -> bool:
        """Expire at ``when`` (a datetime, or Unix time in seconds); True if the key exists.
        A time in the past removes the key."""
        at = when.timestamp() if isinstance(when, dt.datetime) else float(when)
        return self._expire_in(key, at - time.time(), version)

    def pexpire_at(self, key: Any, when: dt.datetime | float, version: Any = None) -> bool:
        """`expire_at`, ``when`` a datetime or Unix time in milliseconds."""
        at = when.timestamp() if isinstance(when, dt.datetime) else float(when) / 1000
        return self._expire_in(key, at - time.time(), version)

    def _expire_in(self, key: Any, seconds: float, version: Any) -> bool:
        made = self.make_and_validate_key(key, version)
        if seconds > 0:
            return self.core.expire(made, seconds)
        return self.core.delete(made)

    def persist(self, key: Any, version: Any = None) -> bool:
        return self.core.persist(self.make_and_validate_key(key, version))

    def lock(
        self,
        key: Any,
        version: Any = None,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking_timeout: float | None = None,
        blocking: bool = True,
        thread_local: bool = True,
    ) -> Lock:
        """A `shardcache.Lock` (redis-py's arguments). Its token belongs to the `Lock`
        object, not to a thread: any thread holding the object may release it, as with
        redis-py's ``thread_local=False``."""
        made = self.make_and_validate_key(key, version)
        return self.core.lock(made, timeout, blocking_timeout, sleep, blocking=blocking)

    def _scan(self, search: str, version: Any, itersize: int | None) -> Iterator[bytes]:
        """The stored keys matching the glob ``search`` (SCAN on every master, never KEYS)."""
        pattern = self.make_key(search, version).encode()
        if self.key_func is default_key_func:  # the prefix is literal, only ``search`` globs
            head = self.make_key("", version).encode()
            pattern = _glob_escape(head) + pattern[len(head) :]
        for shard in self.core.topology.shards():
            yield from shard.scan(pattern, itersize or _SCAN_COUNT)

    def iter_keys(
        self, search: str, version: Any = None, itersize: int | None = None
    ) -> Iterator[str]:
        """Keys matching the glob ``search``, as given to the cache: the default
        KEY_FUNCTION's prefix and version are taken off, a custom one is undone by the
        entry's ``REVERSE_KEY_FUNCTION`` (else the keys come as stored). ``itersize``:
        keys per SCAN round trip."""
        reverse = self.reverse_key_func
        if self.key_func is default_key_func:
            head = len(self.make_key("", version).encode())
            for key in self._scan(search, version, itersize):
                yield key[head:].decode()
        else:
            for key in self._scan(search, version, itersize):
                yield reverse(key.decode()) if reverse else key.decode()

    def keys(self, search: str, version: Any = None) -> list[str]:
        return list(self.iter_keys(search, version))

    def delete_pattern(
        self, pattern: str, version: Any = None, itersize: int | None = None, **_: Any
    ) -> int:
        """Delete every key matching the glob ``pattern``; return how many."""
        found = list(self._scan(pattern, version, itersize))
        return self.core.delete_many(found) if found else 0

    @property
    def client(self) -> RawClients:
        """django-redis's ``cache.client``, for code that calls ``get_client`` on it."""
        return RawClients(self)

    def get_redis_client(self, key: Any = None, version: Any = None, *, write: bool = True) -> Any:
        """A redis-py client: on the server holding ``key`` (as this cache stores it);
        without a key, the cluster's own `redis.cluster.RedisCluster`, or the one server
        or master there is (else `ConfigurationError`: pass a key)."""
        return self.core.redis_client(None if key is None else self.make_key(key, version))


class RawClients:
    """What django-redis's ``cache.client`` offered its users: ``get_client`` and
    ``make_key``."""

    def __init__(self, backend: _ShardcacheCache) -> None:
        self._backend = backend

    def get_client(self, write: bool = True, key: Any = None, version: Any = None) -> Any:
        return self._backend.get_redis_client(key, version, write=write)

    def make_key(self, key: Any, version: Any = None) -> str:
        return self._backend.make_key(key, version)


def _plainly_safe(key: str) -> bool:
    """No memcache key warning possible: short, printable (no control character, no DEL),
    no space. Anything else gets Django's exact check."""
    return len(key) <= MEMCACHE_MAX_KEY_LENGTH and key.isprintable() and " " not in key


class _RedisCache(RedisStructures, _ShardcacheCache):
    """The Redis backends: hashes, sets and sorted sets too."""


class ShardedRedisCache(_RedisCache):
    """Independent Redis servers, keys hashed over them (``OPTIONS["HASH"]``)."""

    kind = "hashpool"


class RedisClusterCache(_RedisCache):
    """A Redis Cluster (``LOCATION``: startup nodes; ``OPTIONS["READ_FROM_REPLICAS"]``)."""

    kind = "cluster"


class RedisSentinelCache(_RedisCache):
    """Sentinel-managed masters (``LOCATION``: sentinels; ``OPTIONS["MASTERS"]``)."""

    kind = "sentinel"


class ShardedMemcacheCache(_ShardcacheCache):
    """Memcached servers with shard states (``OPTIONS["SHARD_STATES"]``)."""

    kind = "memcache"

    def validate_key(self, key: str) -> None:
        # As Django's own memcached backends: an unsafe key is an error, not a warning.
        if not _plainly_safe(key):
            for warning in memcache_key_warnings(key):
                raise InvalidCacheKey(warning)

    def update_shard_states(self, states: list[ShardState | str]) -> None:
        """Change the shards' states at run time (e.g. ``caches["mc"].update_shard_states``):
        every thread and request of this process sees them on its next call."""
        self.core.update_shard_states(states)


# The backend of each topology kind (the kinds of `shardcache.registry`).
BACKENDS: dict[str, type[_ShardcacheCache]] = {
    backend.kind: backend
    for backend in (ShardedRedisCache, RedisClusterCache, RedisSentinelCache, ShardedMemcacheCache)
}
