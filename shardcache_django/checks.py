"""Django system checks for the shardcache ``CACHES`` entries (``manage.py check``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register

from shardcache.backends import problems

__all__ = ["check_caches"]

_KINDS = {
    "shardcache_django.cache.ShardedRedisCache": "hashpool",
    "shardcache_django.cache.RedisClusterCache": "cluster",
    "shardcache_django.cache.RedisSentinelCache": "sentinel",
    "shardcache_django.cache.ShardedMemcacheCache": "memcache",
}


@register(Tags.caches)
def check_caches(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """shardcache.E001 unknown option, E002 empty LOCATION, E003 bad address or shard state,
    E004 unknown hash / shard function / master names, E005 unknown serializer or compressor
    or a missing extra package."""
    errors = []
    for alias, entry in getattr(settings, "CACHES", {}).items():
        kind = _KINDS.get(entry.get("BACKEND", ""))
        if kind is None:
            continue
        for number, message in problems(kind, entry.get("LOCATION"), entry.get("OPTIONS") or {}):
            errors.append(Error(message, obj=f"CACHES[{alias!r}]", id=f"shardcache.E00{number}"))
    return errors
