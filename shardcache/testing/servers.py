"""The three kinds of server process: redis-server, redis-sentinel and memcached."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis
from pymemcache.client.base import Client as MemcacheClient
from pymemcache.exceptions import MemcacheError
from redis.backoff import NoBackoff
from redis.retry import Retry

from shardcache.testing._process import HOST, ServerProcess, find_binary
from shardcache.testing._tls import TlsFiles

__all__ = ["MemcachedServer", "RedisServer", "SentinelServer"]

PROBE_TIMEOUT = 1.0


@functools.cache
def redis_version() -> tuple[int, ...]:
    """The installed redis-server's version, e.g. ``(7, 0, 15)``."""
    out = subprocess.run(
        [find_binary("redis-server"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def _render(settings: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key} {value}\n" for key, value in settings)


class _RedisProtocolServer(ServerProcess):
    """A server that speaks RESP: redis-server and redis-sentinel."""

    def client(self, **kwargs: object) -> redis.Redis:
        """A new redis-py client for this server alone (close it, or use ``with``)."""
        options: dict[str, object] = {
            "socket_timeout": PROBE_TIMEOUT,
            "socket_connect_timeout": PROBE_TIMEOUT,
            "decode_responses": True,
            # A probe answers now or fails now: redis-py's default retries add seconds.
            "retry": Retry(NoBackoff(), 0),
        }
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, **options)  # type: ignore[arg-type]

    def ping(self) -> bool:
        try:
            with self.client() as conn:
                return bool(conn.ping())
        except redis.RedisError:
            return False

    def _base_settings(self) -> list[tuple[str, str]]:
        """Loopback only, in the foreground, everything in its own directory, log to stdout."""
        return [
            ("port", str(self.port)),
            ("bind", HOST),
            ("protected-mode", "no"),
            ("daemonize", "no"),
            ("dir", str(self.workdir)),
            ("logfile", '""'),
        ]


class RedisServer(_RedisProtocolServer):
    """A ``redis-server`` with persistence off, logging to its own directory.

    ``extra`` adds config directives (``{"cluster-enabled": "yes"}``); ``replica_of`` makes it
    a replica of another local server from the start.
    """

    binary = "redis-server"
    role = "redis"

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        label: str = "",
        extra: Mapping[str, str] | None = None,
        replica_of: int | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(port, workdir, label=label)
        self.extra = dict(extra or {})
        self.replica_of = replica_of
        self.tls = tls

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.address}/0"

    def client(self, **kwargs: object) -> redis.Redis:
        if self.tls is not None:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), **kwargs}
        return super().client(**kwargs)

    def write_config(self) -> None:
        settings = [
            *self._base_settings(),
            ("save", '""'),
            ("appendonly", "no"),
            # A replica syncs straight over the socket, at once: no RDB file, no 5 s delay.
            ("repl-diskless-sync", "yes"),
            ("repl-diskless-sync-delay", "0"),
            # Replicas report their offset every second, not every 10 s: until a replica's
            # offset is above 0, CLUSTER SHARDS calls it "loading" instead of "online".
            ("repl-ping-replica-period", "1"),
        ]
        if redis_version() >= (7,):
            # Stop at once on SIGTERM instead of waiting up to 10 s for replicas to catch up.
            settings += [("shutdown-timeout", "0"), ("enable-debug-command", "local")]
        settings += self.extra.items()
        if self.replica_of is not None:
            settings.append(("replicaof", f"{HOST} {self.replica_of}"))
        if self.tls is not None:  # TLS only: the plain port is off
            settings = [(k, v) for k, v in settings if k != "port"]
            settings += [("port", "0"), *_tls_settings(self.port, self.tls)]
        (self.workdir / "redis.conf").write_text(_render(settings))

    def command(self, binary: str) -> list[str]:
        return [binary, str(self.workdir / "redis.conf")]

    def info(self, section: str) -> dict[str, object]:
        with self.client() as conn:
            return conn.info(section)  # type: ignore[no-any-return]


def _tls_settings(port: int, tls: TlsFiles) -> list[tuple[str, str]]:
    # TLS on ``port`` for clients, and for replication (and a sentinel's own connections).
    return [
        ("tls-port", str(port)),
        ("tls-cert-file", str(tls.cert)),
        ("tls-key-file", str(tls.key)),
        ("tls-ca-cert-file", str(tls.ca)),
        ("tls-auth-clients", "no"),
        ("tls-replication", "yes"),
    ]


class SentinelServer(_RedisProtocolServer):
    """A ``redis-sentinel`` watching named masters; it rewrites its own config file."""

    binary = "redis-sentinel"
    role = "sentinel"

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        masters: Mapping[str, int],
        quorum: int,
        down_after_ms: int,
        failover_timeout_ms: int,
        label: str = "",
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(port, workdir, label=label)
        self.tls = tls
        self.masters = dict(masters)
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms

    def write_config(self) -> None:
        settings = [*self._base_settings(), ("sentinel resolve-hostnames", "no")]
        for name, port in self.masters.items():
            settings += [
                ("sentinel monitor", f"{name} {HOST} {port} {self.quorum}"),
                ("sentinel down-after-milliseconds", f"{name} {self.down_after_ms}"),
                ("sentinel failover-timeout", f"{name} {self.failover_timeout_ms}"),
                ("sentinel parallel-syncs", f"{name} 1"),
            ]
        if self.tls is not None:  # TLS only, to clients and to the masters it watches
            settings = [(k, v) for k, v in settings if k != "port"]
            settings += [("port", "0"), *_tls_settings(self.port, self.tls)]
        (self.workdir / "sentinel.conf").write_text(_render(settings))

    def client(self, **kwargs: object) -> redis.Redis:
        if self.tls is not None:
            kwargs = {"ssl": True, "ssl_ca_certs": str(self.tls.ca), **kwargs}
        return super().client(**kwargs)

    def command(self, binary: str) -> list[str]:
        return [binary, str(self.workdir / "sentinel.conf")]

    def masters_seen(self) -> dict[str, dict[str, object]]:
        """``SENTINEL MASTERS`` as ``{name: fields}``."""
        with self.client() as conn:
            return conn.sentinel_masters()  # type: ignore[no-any-return]


class MemcachedServer(ServerProcess):
    """A ``memcached`` on TCP only (UDP off), with a memory cap and optional item size."""

    binary = "memcached"
    role = "memcached"

    def __init__(
        self,
        port: int,
        workdir: Path,
        *,
        label: str = "",
        memory_mb: int = 64,
        max_item_size: str | None = None,
    ) -> None:
        super().__init__(port, workdir, label=label)
        self.memory_mb = memory_mb
        self.max_item_size = max_item_size

    def command(self, binary: str) -> list[str]:
        argv = [binary, "-l", HOST, "-p", str(self.port), "-U", "0"]
        argv += ["-m", str(self.memory_mb), "-c", "1024", "-t", "2"]
        if self.max_item_size:
            argv += ["-I", self.max_item_size]
        if os.geteuid() == 0:
            # memcached refuses to run as root unless told which user to stay.
            argv += ["-u", "root"]
        return argv

    def client(self) -> MemcacheClient:
        return MemcacheClient(
            (HOST, self.port), connect_timeout=PROBE_TIMEOUT, timeout=PROBE_TIMEOUT
        )

    def version(self) -> str:
        conn = self.client()
        try:
            return str(conn.version().decode())
        finally:
            conn.close()

    def ping(self) -> bool:
        try:
            return bool(self.version())
        except MemcacheError:
            return False
