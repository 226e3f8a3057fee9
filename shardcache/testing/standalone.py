"""N independent redis-servers (a hash pool's shards) and N memcacheds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from pymemcache.exceptions import MemcacheError

from shardcache.testing._base import HealthRow, Topology
from shardcache.testing._process import pick_port
from shardcache.testing._tls import TlsFiles, make_certificates
from shardcache.testing.servers import MemcachedServer, RedisServer

__all__ = ["MemcachedServers", "StandaloneRedis"]


def certificates_in(directory: Path, *, restoring: bool) -> TlsFiles:
    """The topology's throw-away certificates: made now, or (restoring a saved state) the
    ones made when it was first started."""
    if restoring:
        return TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    return make_certificates(directory)


def _ports(count: int, given: Sequence[int] | None) -> list[int]:
    return list(given) if given is not None else [pick_port() for _ in range(count)]


class StandaloneRedis(Topology):
    """``count`` independent redis-servers, e.g. the shards of a `HashPool`."""

    kind = "standalone"

    def __init__(self, count: int = 3, *, tls: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if count < 1:
            raise ValueError("StandaloneRedis needs at least one server")
        self.count = count
        self.tls = tls
        self.tls_files: TlsFiles | None = None

    @property
    def servers(self) -> list[RedisServer]:
        return self.processes  # type: ignore[return-value]

    @property
    def urls(self) -> list[str]:
        """``redis://127.0.0.1:PORT/0`` for each server, in order."""
        return [server.url for server in self.servers]

    @property
    def addresses(self) -> list[str]:
        return [server.address for server in self.servers]

    @property
    def ca_file(self) -> str | None:
        """The CA certificate to trust (``ssl_ca_certs``) when started with ``tls=True``."""
        return str(self.tls_files.ca) if self.tls_files else None

    def options(self) -> dict[str, Any]:
        return {"count": self.count, "tls": self.tls}

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[Any]:
        if self.tls:
            self.tls_files = certificates_in(root / "tls", restoring=ports is not None)
        return [
            RedisServer(port, root / f"redis{i}", label=f"redis{i}", tls=self.tls_files)
            for i, port in enumerate(_ports(self.count, ports))
        ]

    def flush(self) -> None:
        for server in self.servers:
            with server.client() as conn:
                conn.flushall()

    def health(self) -> list[HealthRow]:
        rows = []
        for server in self.servers:
            try:
                with server.client() as conn:
                    info = conn.info("server")
                    detail = f"redis {info['redis_version']}, {conn.dbsize()} keys"
                rows.append(HealthRow(self.kind, server.label, server.url, "redis", True, detail))
            except redis.RedisError as exc:
                rows.append(
                    HealthRow(self.kind, server.label, server.url, "redis", False, str(exc))
                )
        return rows

    def describe(self) -> dict[str, Any]:
        return {"urls": self.urls}


class MemcachedServers(Topology):
    """``count`` independent memcacheds, e.g. the shards of a `ShardedMemcacheClient`."""

    kind = "memcached"

    def __init__(
        self,
        count: int = 3,
        *,
        memory_mb: int = 64,
        max_item_size: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if count < 1:
            raise ValueError("MemcachedServers needs at least one server")
        self.count = count
        self.memory_mb = memory_mb
        self.max_item_size = max_item_size

    @property
    def servers(self) -> list[MemcachedServer]:
        return self.processes  # type: ignore[return-value]

    @property
    def addresses(self) -> list[str]:
        """``127.0.0.1:PORT`` for each server, in order."""
        return [server.address for server in self.servers]

    def options(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "memory_mb": self.memory_mb,
            "max_item_size": self.max_item_size,
        }

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[Any]:
        return [
            MemcachedServer(
                port,
                root / f"memcached{i}",
                label=f"memcached{i}",
                memory_mb=self.memory_mb,
                max_item_size=self.max_item_size,
            )
            for i, port in enumerate(_ports(self.count, ports))
        ]

    def flush(self) -> None:
        for server in self.servers:
            conn = server.client()
            try:
                conn.flush_all(noreply=False)
            finally:
                conn.close()

    def health(self) -> list[HealthRow]:
        rows = []
        for server in self.servers:
            conn = server.client()
            try:
                stats = conn.stats()
                detail = f"memcached {stats[b'version'].decode()}, {stats[b'curr_items']} items"
                rows.append(
                    HealthRow(self.kind, server.label, server.address, "memcached", True, detail)
                )
            except (MemcacheError, OSError) as exc:
                rows.append(
                    HealthRow(self.kind, server.label, server.address, "memcached", False, str(exc))
                )
            finally:
                conn.close()
        return rows

    def describe(self) -> dict[str, Any]:
        return {"servers": self.addresses}
