"""System checks for ``SHARDCACHE_RECORDS`` (``manage.py check``): shardcache.E101 bad
BACKEND, E102 unknown option, E103 bad location / topology / database, E104 bad number or
encryption key."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from shardcache_django.records.handler import entries, problems

__all__ = ["check_record_stores"]


@register("shardcache")
def check_record_stores(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    return [
        Error(message, obj=f"SHARDCACHE_RECORDS[{alias!r}]", id=f"shardcache.E{number}")
        for alias, entry in entries().items()
        for number, message in problems(entry)
    ]
