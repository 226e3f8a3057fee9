"""One topology per process per settings, shared by every framework backend object.

Django makes a cache backend object per thread and per ASGI request, and Flask-Caching one per
app; a topology owns pools, a slot map and background threads, so each of those objects
building its own would leak them request after request. They all ask `registry` instead:

- `Registry.topology` returns the topology for a backend entry (``kind``, servers, and the
  options that shape connections: timeouts, pool sizes, TLS, credentials, shard states...),
  built on first use under a lock and shared afterwards;
- `Registry.cache` returns a `Cache` over that topology for the entry's codec options
  (serializer, compressor, signing, ``IGNORE_ERRORS``) and key prefix, shared the same way.

Lifecycle: a shared topology lives until `Registry.close` (called at interpreter exit) or until
somebody closes it (``cache.close()``); calls through objects that still hold it then raise
`ClosedError`, and the next lookup builds a fresh one. django-redis keeps a class-level dict of
connection pools for the same reason; here one registry holds whole topologies, threads and
asyncio connections included, and closes them.
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
from collections.abc import Hashable, Mapping
from typing import Any

from shardcache.backends import CACHE_OPTIONS, Settings, build_cache, build_topology, settings_of
from shardcache.cache import Cache
from shardcache.config import mask_url
from shardcache.deferred import Deferred
from shardcache.dialects import REDIS
from shardcache.errors import ShardError
from shardcache.lifecycle import forget_after_fork
from shardcache.protocols import REDIS_CAPABILITIES, Topology

__all__ = ["Registry", "registry"]

logger = logging.getLogger("shardcache.registry")


_PLAIN = frozenset({str, int, float, bool, bytes, type(None)})


def _frozen(value: Any) -> Hashable:
    """A hashable stand-in for a setting's value (lists and dicts by content, anything
    else unhashable by identity)."""
    kind = type(value)
    if kind in _PLAIN:
        return (kind, value)  # 1 and True and 1.0 stay apart
    if isinstance(value, Mapping):
        return (dict, tuple(sorted((repr(k), _frozen(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (tuple, tuple(map(_frozen, value)))
    try:
        hash(value)
    except TypeError:
        return (id, id(value))
    return (kind, value)


class Registry:
    """Shared topologies and caches, keyed by their normalised settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._topologies: dict[Hashable, Topology] = {}
        self._caches: dict[Hashable, Cache] = {}
        self._kept: dict[Hashable, Any] = {}  # settings keyed by identity live as long
        forget_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # the topologies themselves reset what they own

    def topology(self, kind: str, location: Any, options: Mapping[str, Any]) -> Topology:
        """The shared topology of a valid backend entry (built now if there is none, or if
        the one there was closed). Bad settings raise `ConfigurationError`."""
        settings = settings_of(kind, location, options)
        with self._lock:
            return self._topology_locked(settings)

    def _topology_locked(self, settings: Settings) -> Topology:
        wire = {k: v for k, v in settings.options.items() if k not in CACHE_OPTIONS}
        key = (settings.kind, settings.servers, _frozen(wire))
        found = self._topologies.get(key)
        if found is None or found.closed:
            found = self._topologies[key] = _build(settings)
            self._kept[key] = settings
        return found

    def cache(
        self, kind: str, location: Any, options: Mapping[str, Any], *, prefix: str = ""
    ) -> Cache:
        """The shared `Cache` of a valid backend entry and key prefix, on the shared topology.
        Per call this is one dictionary lookup on the entry as given; the first call reads
        the settings (aliases resolved: spellings of one entry share a topology) and builds,
        under a lock."""
        key = (kind, _frozen(location), _frozen(options), prefix)
        found = self._caches.get(key)
        if found is not None and not found.topology.closed:
            return found
        with self._lock:
            found = self._caches.get(key)
            if found is None or found.topology.closed:
                settings = settings_of(kind, location, options)
                topology = self._topology_locked(settings)
                found = self._caches[key] = build_cache(topology, settings, prefix=prefix)
                self._kept[key] = (location, options)
        return found

    def topologies(self) -> list[Topology]:
        """Every shared topology that is open now."""
        return [topology for topology in self._topologies.values() if not topology.closed]

    def close(self) -> None:
        """Close every shared topology (their threads stop, their sockets close) and forget
        them; the next lookup builds new ones."""
        with self._lock:
            topologies = list(self._topologies.values())
            self._topologies.clear()
            self._caches.clear()
            self._kept.clear()
        for topology in topologies:
            topology.close()


def _build(settings: Settings) -> Topology:
    """`build_topology`; with ``IGNORE_ERRORS``, servers that cannot be reached now (a
    cluster's slot map, a sentinel's masters) give a `Deferred` topology, whose calls miss
    until they can, instead of an error from the backend."""
    try:
        return build_topology(settings)
    except ShardError as exc:
        if not settings.options.get("IGNORE_ERRORS"):
            raise
        logger.warning(
            "shardcache: %s not reachable at first use (%s); calls miss", settings.kind, exc
        )
        return Deferred(
            functools.partial(build_topology, settings),
            exc,
            capabilities=REDIS_CAPABILITIES,
            dialect=REDIS,
            retry_timeout=settings.options.get("RETRY_TIMEOUT", 1.0),
            name=f"{settings.kind} {', '.join(mask_url(s) for s in settings.servers)}",
        )


registry = Registry()
atexit.register(registry.close)
