"""Flask-Caching backends, one per topology. They read Flask's ``CACHE_*`` keys into the
framework-neutral entry of `shardcache.backends`, and give cachelib's answers (lists,
bools, None for a miss); every behaviour lives in `shardcache.Cache`.

    app.config.update(
        CACHE_TYPE="shardcache_flask.RedisClusterCache",
        CACHE_REDIS_CLUSTER="node-a:7000,node-b:7001",
        CACHE_KEY_PREFIX="myapp:",
    )

Flask-Caching calls ``factory`` only for subclasses of its own ``BaseCache`` and only when
the import path does not contain "cachelib", hence the base class and these module names.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from flask import Flask
from flask_caching.backends.base import BaseCache

from shardcache import Cache, MissingKeyError, ShardError, ShardState
from shardcache.backends import problems, stampede_options
from shardcache.errors import ConfigurationError
from shardcache.protocols import SCAN
from shardcache.registry import registry

__all__ = [
    "RedisClusterCache",
    "RedisSentinelCache",
    "ShardedMemcacheCache",
    "ShardedRedisCache",
    "computed",
    "get_redis_client",
]

_OWN = "CACHE_SHARDCACHE_"
_LOCATION_KEYS = {"SERVERS", "MASTERS"}  # ours, but not OPTIONS


class _ShardcacheBackend(BaseCache):
    """What the four backends share; ``kind`` picks the topology."""

    kind: ClassVar[str]

    def __init__(
        self,
        location: Any,
        options: Mapping[str, Any] | None = None,
        *,
        key_prefix: str = "",
        default_timeout: int | dt.timedelta = 300,
        ignore_delete_many_errors: bool = False,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout,  # type: ignore[arg-type]
            ignore_delete_many_errors=ignore_delete_many_errors,
        )
        if not isinstance(key_prefix, str):
            raise ConfigurationError("CACHE_KEY_PREFIX must be a string")
        options = dict(options or {})
        found = problems(self.kind, location, options)
        if found:
            text = "; ".join(message for _, message in found)
            raise ConfigurationError(f"{type(self).__name__}: {text}")
        self.key_prefix = key_prefix
        self.stampede = stampede_options(options.get("STAMPEDE"))
        self._entry = (location, options)
        self._core: Cache | None = None

    @property
    def core(self) -> Cache:
        """The process-wide cache of these settings (`shardcache.registry`), built on first
        use: an app starts while its cache is down, and apps with the same settings share
        one topology."""
        core = self._core
        if core is None:
            location, options = self._entry
            core = self._core = registry.cache(self.kind, location, options, prefix=self.key_prefix)
        return core

    @classmethod
    def factory(
        cls, app: Flask, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]
    ) -> _ShardcacheBackend:
        """Flask-Caching's entry point: ``config`` is the app's ``CACHE_*`` settings,
        ``args`` its ``CACHE_ARGS`` (server addresses, when the topology's own key is not
        set), ``kwargs`` the default timeout, ``ignore_delete_many_errors`` and
        ``CACHE_OPTIONS`` (our options, in either case, e.g. ``{"socket_timeout": 2}``)."""
        kwargs = dict(kwargs)
        timeout = kwargs.pop("default_timeout", config.get("CACHE_DEFAULT_TIMEOUT", 300))
        ignore = bool(kwargs.pop("ignore_delete_many_errors", False))
        options: dict[str, Any] = {name.upper(): value for name, value in kwargs.items()}
        for name, value in config.items():
            if name.startswith(_OWN) and name[len(_OWN) :] not in _LOCATION_KEYS:
                options[name[len(_OWN) :]] = value
        location = cls.location_from(config, options) or list(args)
        if "shardcache" not in app.cli.commands:
            from shardcache_flask.cli import group

            app.cli.add_command(group)
        return cls(
            location,
            options,
            key_prefix=config.get("CACHE_KEY_PREFIX") or "",
            default_timeout=timeout,
            ignore_delete_many_errors=ignore,
        )

    @classmethod
    def location_from(cls, config: Mapping[str, Any], options: dict[str, Any]) -> Any:
        """The servers from the topology's conventional keys (may add to ``options``)."""
        raise NotImplementedError(f"{cls.__name__} must say where its servers are configured")

    # --- timeouts: None = the default, 0 = never expires, negative = not kept -------------

    def _ttl(self, timeout: int | float | dt.timedelta | None) -> float | None:
        if timeout is None:
            timeout = self.default_timeout
        if isinstance(timeout, dt.timedelta):
            timeout = timeout.total_seconds()
        if timeout == 0:
            return None
        return float(timeout) if timeout > 0 else -1.0

    # --- cachelib's BaseCache -------------------------------------------------------------

    def get(self, key: str) -> Any:
        return self.core.get(key)

    def get_many(self, *keys: str) -> list[Any]:
        found = self.core.get_many(keys)
        return [found.get(key) for key in keys]

    def get_dict(self, *keys: str) -> dict[str, Any]:
        return dict(zip(keys, self.get_many(*keys), strict=True))

    def set(self, key: str, value: Any, timeout: Any = None) -> bool:
        return self.core.set(key, value, self._ttl(timeout))

    def add(self, key: str, value: Any, timeout: Any = None) -> bool:
        return self.core.add(key, value, self._ttl(timeout))

    def set_many(self, mapping: dict[str, Any], timeout: Any = None) -> list[Any]:
        failed = set(self.core.set_many(mapping, self._ttl(timeout)))
        return [key for key in mapping if key not in failed]

    def delete(self, key: str) -> bool:
        return self.core.delete(key)

    def delete_many(self, *keys: str) -> list[Any]:
        """The keys now absent (all of them, after one DEL per shard). If a shard could not
        be reached: RuntimeError, or [] with ``ignore_delete_many_errors``, as cachelib."""
        try:
            self.core.delete_many(keys)
        except ShardError as exc:
            if self.ignore_delete_many_errors:
                return []
            raise RuntimeError(f"Failed to delete keys: {list(keys)}: {exc}") from exc
        return list(keys)

    def has(self, key: str) -> bool:
        return self.core.has(key)

    def clear(self) -> bool:
        """Deletes this prefix's keys on every master (SCAN + UNLINK), or with no prefix
        (and always on memcache, which cannot list keys) empties every server."""
        if self.key_prefix and SCAN in self.core.topology.capabilities:
            self.core.clear()
        else:
            self.core.clear(flush=True)
        return True

    def inc(self, key: str, delta: int = 1) -> int | None:
        """Atomic on the server; a missing key starts at 0, as cachelib's."""
        try:
            return self.core.incr(key, delta, create=True)
        except MissingKeyError:  # only when the shard is down and errors are ignored
            return None

    def dec(self, key: str, delta: int = 1) -> int | None:
        return self.inc(key, -delta)


def _servers(value: Any) -> list[str]:
    """A list of addresses from a list, a ``,``/``;`` string or (host, port) pairs."""
    if isinstance(value, str):
        return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
    return [
        f"{item[0]}:{item[1]}" if isinstance(item, tuple | list) else str(item) for item in value
    ]


class ShardedRedisCache(_ShardcacheBackend):
    """Independent Redis servers, keys hashed over them: ``CACHE_SHARDCACHE_SERVERS`` (a list of
    redis URLs), else the one server of ``CACHE_REDIS_URL`` or ``CACHE_REDIS_HOST``/``_PORT``/
    ``_DB``/``_PASSWORD``; ``CACHE_SHARDCACHE_HASH`` picks the hash."""

    kind = "hashpool"

    @classmethod
    def location_from(cls, config: Mapping[str, Any], options: dict[str, Any]) -> Any:
        if config.get("CACHE_REDIS_PASSWORD"):
            options.setdefault("PASSWORD", config["CACHE_REDIS_PASSWORD"])
        if config.get(_OWN + "SERVERS"):
            return _servers(config[_OWN + "SERVERS"])
        if config.get("CACHE_REDIS_URL"):
            return [config["CACHE_REDIS_URL"]]
        if config.get("CACHE_REDIS_HOST"):
            host, port = config["CACHE_REDIS_HOST"], config.get("CACHE_REDIS_PORT", 6379)
            return [f"redis://{host}:{port}/{config.get('CACHE_REDIS_DB', 0)}"]
        return None


class RedisClusterCache(_ShardcacheBackend):
    """A Redis Cluster: ``CACHE_REDIS_CLUSTER`` ("host:port,host:port") or ``CACHE_REDIS_URL``;
    ``CACHE_SHARDCACHE_READ_FROM_REPLICAS`` for replica reads."""

    kind = "cluster"

    @classmethod
    def location_from(cls, config: Mapping[str, Any], options: dict[str, Any]) -> Any:
        if config.get("CACHE_REDIS_PASSWORD"):
            options.setdefault("PASSWORD", config["CACHE_REDIS_PASSWORD"])
        if config.get("CACHE_REDIS_CLUSTER"):
            return _servers(config["CACHE_REDIS_CLUSTER"])
        return [config["CACHE_REDIS_URL"]] if config.get("CACHE_REDIS_URL") else None


class RedisSentinelCache(_ShardcacheBackend):
    """Sentinel-managed masters: ``CACHE_REDIS_SENTINELS`` and ``CACHE_REDIS_SENTINEL_MASTER``,
    or ``CACHE_SHARDCACHE_MASTERS`` (several names to shard over)."""

    kind = "sentinel"

    @classmethod
    def location_from(cls, config: Mapping[str, Any], options: dict[str, Any]) -> Any:
        masters = config.get(_OWN + "MASTERS") or config.get("CACHE_REDIS_SENTINEL_MASTER")
        if masters:
            options.setdefault("MASTERS", masters)
        for key, option in [
            ("CACHE_REDIS_PASSWORD", "PASSWORD"),
            ("CACHE_REDIS_SENTINEL_PASSWORD", "SENTINEL_PASSWORD"),
            ("CACHE_REDIS_DB", "DB"),
        ]:
            if config.get(key):
                options.setdefault(option, config[key])
        sentinels = config.get("CACHE_REDIS_SENTINELS")
        return _servers(sentinels) if sentinels else None


class ShardedMemcacheCache(_ShardcacheBackend):
    """memcached servers with shard states: ``CACHE_MEMCACHED_SERVERS``, and
    ``CACHE_SHARDCACHE_SHARD_STATES``; `update_shard_states` changes them at run time."""

    kind = "memcache"

    @classmethod
    def location_from(cls, config: Mapping[str, Any], options: dict[str, Any]) -> Any:
        servers = config.get("CACHE_MEMCACHED_SERVERS")
        return _servers(servers) if servers else None

    def update_shard_states(self, states: list[ShardState | str]) -> None:
        """Change the shards' states, e.g. ``cache.cache.update_shard_states([...])``."""
        self.core.update_shard_states(states)


def get_redis_client(cache: Any, key: str | None = None) -> Any:
    """A redis-py client behind a Flask-Caching ``Cache`` (or its backend) configured with a
    shardcache Redis backend: on the server holding ``key`` (with ``CACHE_KEY_PREFIX``, as
    the cache stores it); without a key, the cluster's own client, or the one server or
    master there is."""
    backend = getattr(cache, "cache", cache)
    if not isinstance(backend, _ShardcacheBackend):
        raise TypeError(f"{type(backend).__name__} is not a shardcache backend")
    return backend.core.redis_client(key)


def computed(
    cache: Any,
    timeout: float | None = None,
    *,
    key: str | Callable[..., str] | None = None,
    **options: float,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Flask-Caching's ``cached``/``memoize``, with stampede protection: the decorated
    function's result is kept ``timeout`` seconds (the cache's default) through
    `shardcache.Cache.get_or_compute`, so when it is missing or expiring one caller
    computes it while the others get the previous value or wait (bounded), and XFetch
    recomputes it ahead of expiry. The key is the function's name and arguments (a view's
    URL arguments included), or ``key`` (a string, or a function of the same arguments).
    ``options`` (``beta``, ``stale``, ``wait``, ``lock_timeout``) override
    ``CACHE_SHARDCACHE_STAMPEDE``'s.

        @app.route("/report/<int:year>")
        @computed(cache, timeout=300)
        def report(year: int) -> str: ...
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = f"{fn.__module__}.{fn.__qualname__}"

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            backend = getattr(cache, "cache", cache)
            if not isinstance(backend, _ShardcacheBackend):
                raise TypeError(f"{type(backend).__name__} is not a shardcache backend")
            if callable(key):
                made = key(*args, **kwargs)
            elif key is not None:
                made = key
            else:
                text = repr((args, sorted(kwargs.items())))
                made = f"computed:{name}:{hashlib.sha1(text.encode()).hexdigest()}"
            ttl = backend._ttl(timeout)
            if ttl is None or ttl <= 0:
                raise ValueError("computed() needs a positive timeout")
            settings = {**(backend.stampede or {}), **options}
            return backend.core.get_or_compute(made, lambda: fn(*args, **kwargs), ttl, **settings)

        return wrapper

    return decorate
