"""What each shard says about itself: one typed `ShardReport` per server, from Redis's INFO or
memcached's ``stats``, plus what the client knows (the round trip of that call, the circuit
breaker, the memcache shard state). `Cache.stats` and the ``shardcache_cache info``
commands show them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from shardcache.errors import ShardError, text_of

__all__ = ["KeyLocation", "ShardReport", "parse_info", "redis_report"]


@dataclass(frozen=True)
class ShardReport:
    """One server. ``group``: what it serves (a sentinel name, a cluster node's slot
    ranges, "replica of ..."); ``state``: a memcache shard's state; ``breaker``: "closed" or
    "open" (calls fail at once). Figures the server did not give are None."""

    address: str
    role: str
    reachable: bool
    latency_ms: float | None = None
    keys: int | None = None
    memory_used: int | None = None
    memory_max: int | None = None
    hits: int | None = None
    misses: int | None = None
    evictions: int | None = None
    breaker: str = "closed"
    group: str = ""
    state: str = ""
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KeyLocation:
    """Where a key lives: its stored form, the shard (a server, a sentinel name, a cluster
    node), the server's address, the cluster slot, and what the server holds there: whether
    it exists, its time to live (seconds, None = never expires) and its stored size."""

    key: str
    shard: str
    address: str
    slot: int | None
    exists: bool
    ttl: float | None
    size: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_info(text: bytes | str) -> dict[str, str]:
    """Redis's INFO text as ``{field: value}`` (every section; keyspace lines kept whole)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and ":" in line:
            name, _, value = line.partition(":")
            fields[name] = value
    return fields


def _int(fields: Mapping[str, str], name: str) -> int | None:
    try:
        return int(fields[name])
    except (KeyError, ValueError):
        return None


def _keys(fields: Mapping[str, str]) -> int:
    """The keys of every database (``db0:keys=3,expires=0,avg_ttl=0``)."""
    total = 0
    for name, value in fields.items():
        if name.startswith("db") and name[2:].isdigit():
            for part in value.split(","):
                if part.startswith("keys="):
                    total += int(part[5:])
    return total


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    result = call()
    return result, (time.perf_counter() - began) * 1000


def redis_report(shard: Any, *, group: str = "") -> ShardReport:
    """`ShardReport` of a `shardcache.connections.RedisShard`: a PING for the latency, then
    INFO. A server that fails (or whose breaker is open) is reported unreachable."""
    breaker = "open" if shard.breaker.is_open else "closed"
    try:
        _, latency = timed(lambda: shard.execute(b"PING"))
        fields = parse_info(shard.execute(b"INFO"))
    except ShardError as exc:
        return ShardReport(shard.id, "unknown", False, breaker=breaker, group=group, error=str(exc))
    return ShardReport(
        address=shard.id,
        role="replica" if fields.get("role") == "slave" else fields.get("role", "unknown"),
        reachable=True,
        latency_ms=round(latency, 3),
        keys=_keys(fields),
        memory_used=_int(fields, "used_memory"),
        memory_max=_int(fields, "maxmemory"),
        hits=_int(fields, "keyspace_hits"),
        misses=_int(fields, "keyspace_misses"),
        evictions=_int(fields, "evicted_keys"),
        breaker="open" if shard.breaker.is_open else "closed",
        group=group,
    )


def memcache_report(
    address: str, state: str, healthy: bool, stats: Callable[[], Mapping[Any, Any]]
) -> ShardReport:
    """`ShardReport` of one memcached, from its ``stats`` (``stats()`` gives them)."""
    breaker = "closed" if healthy else "open"
    try:
        found, latency = timed(stats)
    except ShardError as exc:
        return ShardReport(
            address, "memcached", False, breaker=breaker, state=state, error=str(exc)
        )
    fields = {text_of(k): text_of(v) for k, v in found.items()}
    return ShardReport(
        address=address,
        role="memcached",
        reachable=True,
        latency_ms=round(latency, 3),
        keys=_int(fields, "curr_items"),
        memory_used=_int(fields, "bytes"),
        memory_max=_int(fields, "limit_maxbytes"),
        hits=_int(fields, "get_hits"),
        misses=_int(fields, "get_misses"),
        evictions=_int(fields, "evictions"),
        breaker=breaker,
        state=state,
    )
