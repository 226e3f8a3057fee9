"""A local Sentinel setup: named masters, each with replicas, watched by several sentinels."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from shardcache.errors import ServerNotReadyError
from shardcache.testing._base import HealthRow, Topology
from shardcache.testing._process import HOST, ServerProcess, pick_port, wait_until
from shardcache.testing._tls import TlsFiles
from shardcache.testing.servers import RedisServer, SentinelServer
from shardcache.testing.standalone import certificates_in

__all__ = ["RedisSentinel"]

_WAIT_ERRORS = (OSError, redis.RedisError)


def _serving_as_master_or_attached(node: RedisServer) -> bool:
    info = node.info("replication")
    return info.get("role") == "master" or info.get("master_link_status") == "up"


class RedisSentinel(Topology):
    """Named masters (``bucket0``, ``bucket1``), each with replicas, and ``sentinels`` sentinels.

    Short ``down_after_ms`` and ``failover_timeout_ms`` let tests fail over in seconds. Ready
    only when every sentinel agrees on each master, sees its replicas and the other
    sentinels (so a failover can be agreed on), and every replica's link is up.
    """

    kind = "sentinel"

    def __init__(
        self,
        names: Sequence[str] = ("bucket0", "bucket1"),
        replicas_per_master: int = 1,
        sentinels: int = 3,
        *,
        quorum: int = 2,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 10000,
        tls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tls = tls  # TLS only: clients, replication and the sentinels
        self.tls_files: TlsFiles | None = None
        if not names or sentinels < 1 or not 1 <= quorum <= sentinels:
            raise ValueError("RedisSentinel needs master names and 1 <= quorum <= sentinels")
        self.names = list(names)
        self.replicas_per_master = replicas_per_master
        self.sentinel_count = sentinels
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.groups: dict[str, list[RedisServer]] = {}
        self.sentinels: list[SentinelServer] = []

    def options(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "replicas_per_master": self.replicas_per_master,
            "sentinels": self.sentinel_count,
            "quorum": self.quorum,
            "down_after_ms": self.down_after_ms,
            "failover_timeout_ms": self.failover_timeout_ms,
            "tls": self.tls,
        }

    @property
    def ca_file(self) -> str | None:
        """The CA certificate to trust (``ssl_ca_certs``) when started with ``tls=True``."""
        return str(self.tls_files.ca) if self.tls_files else None

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[Any]:
        per_group = 1 + self.replicas_per_master
        total = len(self.names) * per_group + self.sentinel_count
        free = iter(ports if ports is not None else [pick_port() for _ in range(total)])
        if self.tls:
            self.tls_files = certificates_in(root / "tls", restoring=ports is not None)
        tls = self.tls_files
        self.groups = {}
        for name in self.names:
            first = RedisServer(next(free), root / f"{name}-node0", label=f"{name}-node0", tls=tls)
            self.groups[name] = [first] + [
                RedisServer(
                    next(free),
                    root / f"{name}-node{i}",
                    label=f"{name}-node{i}",
                    replica_of=first.port,
                    tls=tls,
                )
                for i in range(1, per_group)
            ]
        first_masters = {name: group[0].port for name, group in self.groups.items()}
        self.sentinels = [
            SentinelServer(
                next(free),
                root / f"sentinel{i}",
                label=f"sentinel{i}",
                masters=first_masters,
                quorum=self.quorum,
                down_after_ms=self.down_after_ms,
                failover_timeout_ms=self.failover_timeout_ms,
                tls=tls,
            )
            for i in range(self.sentinel_count)
        ]
        return [node for group in self.groups.values() for node in group] + self.sentinels

    @property
    def redis_nodes(self) -> list[RedisServer]:
        return [node for group in self.groups.values() for node in group]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every sentinel, as redis-py's ``Sentinel`` accepts them."""
        return [(HOST, sentinel.port) for sentinel in self.sentinels]

    # --- asking the sentinels ----------------------------------------------------------

    def _ask(self, *command: Any) -> Any:
        """Run a SENTINEL command on the first sentinel that answers."""
        last: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                with sentinel.client() as conn:
                    return conn.execute_command("SENTINEL", *command)
            except redis.ConnectionError as exc:
                last = exc
        raise redis.ConnectionError(f"no sentinel answers: {last!r}")

    def master_address(self, name: str) -> tuple[str, int]:
        """The master of ``name`` as the sentinels report it now."""
        host, port = self._ask("GET-MASTER-ADDR-BY-NAME", self._known(name))
        return host, int(port)

    def master(self, name: str) -> RedisServer:
        """The server that is the master of ``name`` now."""
        _, port = self.master_address(name)
        return next(node for node in self.groups[name] if node.port == port)

    def replicas(self, name: str) -> list[RedisServer]:
        """The servers of ``name`` other than its current master."""
        master = self.master(name)
        return [node for node in self.groups[self._known(name)] if node is not master]

    def _known(self, name: str) -> str:
        if name not in self.groups:
            raise KeyError(f"unknown master name {name!r}; this setup has {self.names}")
        return name

    # --- readiness and failover ----------------------------------------------------------

    def _first_wave(self) -> list[ServerProcess]:
        # Sentinels start once the replicas are attached: a sentinel learns a master's
        # replicas from its INFO, which it reads at once and then only every 10 s.
        return list(self.redis_nodes)

    def _wait_ready(self, timeout: float) -> None:
        for node in self.redis_nodes:
            node.wait_ready(timeout)
        for node in self.redis_nodes:
            wait_until(
                functools.partial(_serving_as_master_or_attached, node),
                timeout=timeout,
                what=f"{node.label} to attach to its master",
                errors=_WAIT_ERRORS,
            )
        for sentinel in self.sentinels:
            sentinel.launch(detach=self.detach)
        for sentinel in self.sentinels:
            sentinel.wait_ready(timeout)
        for name in self.names:
            wait_until(
                functools.partial(self.is_settled, name),
                timeout=timeout,
                what=f"the sentinels to settle on {name}",
                errors=_WAIT_ERRORS,
            )

    def is_settled(self, name: str) -> bool:
        """All running sentinels agree on ``name``'s master, see every running replica and
        each other, and the master has every running replica online."""
        running = [s for s in self.sentinels if s.running]
        running_nodes = [node for node in self.groups[name] if node.running]
        addresses = set()
        for sentinel in running:
            with sentinel.client() as conn:
                master = conn.sentinel_master(name)
                replicas = conn.sentinel_slaves(name)
            # Exactly "master": not s_down, o_down, failover_in_progress, disconnected...
            if set(master["flags"].split(",")) != {"master"}:
                return False
            if master["num-other-sentinels"] < len(running) - 1:
                return False
            healthy = {int(r["port"]) for r in replicas if set(r["flags"].split(",")) == {"slave"}}
            addresses.add(int(master["port"]))
            expected = {node.port for node in running_nodes} - {int(master["port"])}
            if not expected <= healthy:
                return False
        if len(addresses) != 1:
            return False
        (port,) = addresses
        node = next((n for n in self.groups[name] if n.port == port), None)
        if node is None or not node.running:
            return False
        info = node.info("replication")
        if info.get("role") != "master":
            return False
        online = sum(
            1
            for key, value in info.items()
            if key.startswith("slave")
            and isinstance(value, dict)
            and value.get("state") == "online"
        )
        return online == len(running_nodes) - 1

    def failover(
        self, name: str, timeout: float = 90.0, *, settle: bool = True, settle_timeout: float = 60.0
    ) -> tuple[str, int]:
        """Force a failover of ``name`` (``SENTINEL FAILOVER``) and return the new master.

        Returns once every sentinel reports the new address (within ``timeout`` seconds) and,
        with ``settle``, once the old master (when running) has rejoined as a replica: the
        sentinels demote it on their own schedule, about ten seconds later, and until then it
        still accepts writes from clients that have not switched.
        """
        old = self.master_address(name)
        last_request = [-1e9]

        def request() -> None:
            try:
                self._ask("FAILOVER", name)
                last_request[0] = time.monotonic()
            except redis.ResponseError as exc:  # INPROG or NOGOODSLAVE: not possible yet
                if "INPROG" not in str(exc) and "NOGOODSLAVE" not in str(exc):
                    raise

        def progress() -> tuple[str, int] | None:
            reported, in_progress = set(), False
            for sentinel in self.sentinels:
                if sentinel.running:
                    with sentinel.client() as conn:
                        state = conn.sentinel_master(name)
                    reported.add((state["ip"], int(state["port"])))
                    in_progress |= "failover_in_progress" in state["flags"]
            if len(reported) == 1 and old not in reported:
                return reported.pop()
            # Nobody moved and nothing is under way: the request was refused or the failover
            # aborted (on a busy machine the promotion can outlast failover-timeout). Ask
            # again, but never while any sentinel already names a new master.
            if reported == {old} and not in_progress and time.monotonic() - last_request[0] > 3:
                request()
            return None

        try:
            new = wait_until(
                progress,
                timeout=timeout,
                what=f"every sentinel to report a new {name}",
                errors=_WAIT_ERRORS,
            )
        except ServerNotReadyError as exc:
            raise ServerNotReadyError(f"{exc}\n{self._views(name)}") from exc
        if settle:
            wait_until(
                functools.partial(self.is_settled, name),
                timeout=settle_timeout,
                what=f"{name} to settle after failover",
                errors=_WAIT_ERRORS,
            )
        return new

    def _views(self, name: str) -> str:
        """What each sentinel thinks of ``name``, and its last log lines: for error messages."""
        lines = []
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as conn:
                    state = conn.sentinel_master(name)
                view = (
                    f"{state['ip']}:{state['port']} flags={state['flags']} "
                    f"epoch={state.get('config-epoch')}"
                )
            except redis.RedisError as exc:
                view = f"unreachable ({exc})"
            log = sentinel.read_log(600).strip().replace("\n", "\n    ")
            lines.append(f"  {sentinel.label}: {view}\n    {log}")
        return "\n".join(lines)

    # --- Topology API ----------------------------------------------------------------------

    def flush(self) -> None:
        for name in self.names:
            with self.master(name).client() as conn:
                conn.flushall()

    def health(self) -> list[HealthRow]:
        rows = []
        for name, group in self.groups.items():
            for node in group:
                try:
                    info = node.info("replication")
                    role = str(info["role"]).replace("slave", "replica")
                    detail = f"{name}, {info.get('connected_slaves', 0)} replicas attached"
                    if role == "replica":
                        detail = f"{name}, link {info.get('master_link_status')}"
                    rows.append(HealthRow(self.kind, node.label, node.url, role, True, detail))
                except redis.RedisError as exc:
                    rows.append(HealthRow(self.kind, node.label, node.url, "?", False, str(exc)))
        for sentinel in self.sentinels:
            try:
                seen = sentinel.masters_seen()
                detail = ", ".join(
                    f"{name}->{fields['ip']}:{fields['port']}"
                    for name, fields in sorted(seen.items())
                )
                ok = set(seen) == set(self.names)
                rows.append(
                    HealthRow(self.kind, sentinel.label, sentinel.address, "sentinel", ok, detail)
                )
            except redis.RedisError as exc:
                rows.append(
                    HealthRow(
                        self.kind, sentinel.label, sentinel.address, "sentinel", False, str(exc)
                    )
                )
        return rows

    def describe(self) -> dict[str, Any]:
        return {
            "sentinels": [sentinel.address for sentinel in self.sentinels],
            "names": list(self.names),
        }
