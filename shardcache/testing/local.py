"""Several topologies started side by side: the whole local set for the demo and the CLI."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from shardcache.errors import PortInUseError
from shardcache.testing._base import HealthRow, StartStop, Topology
from shardcache.testing.cluster import RedisCluster
from shardcache.testing.sentinel import RedisSentinel
from shardcache.testing.standalone import MemcachedServers, StandaloneRedis

__all__ = ["LocalTopology", "format_health"]

T = TypeVar("T", bound=Topology)

_KINDS: dict[str, type[Topology]] = {
    cls.kind: cls for cls in (StandaloneRedis, RedisCluster, RedisSentinel, MemcachedServers)
}


class LocalTopology(StartStop):
    """Start several topologies at once: all processes launch together, then each part
    settles (cluster forming, sentinel discovery) in parallel.

    The default is the full set: 3 standalone redis, a 6-node cluster, a sentinel setup of
    4 redis and 3 sentinels, and 3 memcached.
    """

    def __init__(
        self,
        *,
        standalone: int = 3,
        cluster: bool = True,
        sentinel: bool = True,
        memcached: int = 3,
        detach: bool = False,
    ) -> None:
        self.parts: dict[str, Topology] = {}
        if standalone:
            self.parts["standalone"] = StandaloneRedis(standalone, detach=detach)
        if cluster:
            self.parts["cluster"] = RedisCluster(detach=detach)
        if sentinel:
            self.parts["sentinel"] = RedisSentinel(detach=detach)
        if memcached:
            self.parts["memcached"] = MemcachedServers(memcached, detach=detach)
        self.startup_seconds: float | None = None

    def __getitem__(self, kind: str) -> Topology:
        return self.parts[kind]

    def _part(self, kind: str, cls: type[T]) -> T:
        part = self.parts.get(kind)
        if not isinstance(part, cls):
            raise KeyError(f"this local set has no {kind} part (it has {sorted(self.parts)})")
        return part

    @property
    def standalone(self) -> StandaloneRedis:
        return self._part("standalone", StandaloneRedis)

    @property
    def cluster(self) -> RedisCluster:
        return self._part("cluster", RedisCluster)

    @property
    def sentinel(self) -> RedisSentinel:
        return self._part("sentinel", RedisSentinel)

    @property
    def memcached(self) -> MemcachedServers:
        return self._part("memcached", MemcachedServers)

    def start(self) -> None:
        """Launch every process of every part, then wait for all parts in parallel."""
        began = time.monotonic()
        try:
            for part in self.parts.values():
                part.launch()
            with ThreadPoolExecutor(max_workers=max(1, len(self.parts))) as pool:
                list(pool.map(self._settle, self.parts.values()))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    @staticmethod
    def _settle(part: Topology) -> None:
        began = time.monotonic()
        try:
            part.wait_ready()
        except PortInUseError:
            part.stop()
            part.start()  # fresh ports, with its own retries
        part.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        with ThreadPoolExecutor(max_workers=max(1, len(self.parts))) as pool:
            list(pool.map(lambda part: part.stop(), self.parts.values()))

    def health(self) -> list[HealthRow]:
        return [row for part in self.parts.values() for row in part.health()]

    def state(self) -> dict[str, Any]:
        return {"parts": {kind: part.state() for kind, part in self.parts.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> LocalTopology:
        """Re-attach to a set another interpreter started (``python -m shardcache.testing up``)."""
        local = cls(standalone=0, cluster=False, sentinel=False, memcached=0)
        for kind, part_state in state["parts"].items():
            local.parts[kind] = _KINDS[part_state["kind"]].from_state(part_state)
        return local


def format_health(rows: list[HealthRow]) -> str:
    """A plain-text table of health rows, one server a line."""
    header = ("topology", "server", "address", "role", "ok", "detail")
    lines = [header] + [
        (r.topology, r.label, r.address, r.role, "yes" if r.ok else "NO", r.detail) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=True))
        + "  "
        + line[-1]
        for line in lines
    )
