"""shardcache for Django: ``CACHES`` backends per topology and the record-store app.

The backends (``shardcache_django.cache``) and the app (``shardcache_django.records``) are
built on the framework-agnostic core in `shardcache`; this package only adapts Django's
conventions (key making, timeouts, settings, system checks) to it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_redis_client", "get_redis_connection"]


def get_redis_client(alias: str = "default", key: Any = None, *, write: bool = True) -> Any:
    """A redis-py client for ``CACHES[alias]`` (a shardcache Redis backend): on the server
    holding ``key`` as that cache stores it; without a key, the cluster's own client, or the
    one server or master there is. django-redis's ``get_redis_connection``, shard-aware."""
    from django.core.cache import caches

    backend = caches[alias]
    get = getattr(backend, "get_redis_client", None)
    if get is None:
        raise TypeError(f"CACHES[{alias!r}] is {type(backend).__name__}, not a shardcache backend")
    return get(key, write=write)


def get_redis_connection(alias: str = "default", write: bool = True, key: Any = None) -> Any:
    """django-redis's name and argument order for `get_redis_client`."""
    return get_redis_client(alias, key, write=write)
