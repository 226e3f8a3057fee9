"""A local Redis Cluster: masters with replicas, formed by hand, and live slot migration.

We form the cluster with CLUSTER ADDSLOTS / MEET / REPLICATE instead of
``redis-cli --cluster create``: it needs no extra binary, gives each node a distinct config
epoch up front (no epoch-collision round), and polls conditions instead of sleeping a second
per step, so six nodes are ready in about two seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from shardcache.testing._base import HealthRow, Topology
from shardcache.testing._process import HOST, pick_port, wait_until
from shardcache.testing._tls import TlsFiles
from shardcache.testing.servers import RedisServer
from shardcache.testing.standalone import certificates_in

__all__ = ["ClusterNodeView", "RedisCluster", "SlotMigration"]

SLOTS = 16384
_UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "pfail", "handshake", "noaddr"})
_WAIT_ERRORS = (OSError, redis.RedisError)


@dataclass(frozen=True)
class ClusterNodeView:
    """One line of ``CLUSTER NODES``: how one node sees another."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def healthy(self) -> bool:
        return self.connected and not (self.flags & _UNHEALTHY_FLAGS)

    def owns(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)

    @classmethod
    def parse(cls, line: str) -> ClusterNodeView:
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # an importing/migrating marker, not an owned slot
                continue
            low, _, high = item.partition("-")
            slots.append((int(low), int(high or low)))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            master_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(slots),
        )


def cluster_nodes(node: RedisServer) -> list[ClusterNodeView]:
    """``CLUSTER NODES`` as seen by ``node``."""
    with node.client() as conn:
        text = conn.execute_command("CLUSTER", "NODES")
    return [ClusterNodeView.parse(line) for line in text.splitlines() if line.strip()]


def cluster_info(node: RedisServer) -> dict[str, str]:
    with node.client() as conn:
        text = conn.execute_command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _all_online(node: RedisServer) -> bool:
    """Whether ``CLUSTER SHARDS`` on ``node`` calls every node "online" (not "loading")."""
    with node.client() as conn:
        shards = conn.execute_command("CLUSTER", "SHARDS")
    # redis-py before 5.1 hands the reply back as flat [name, value, ...] lists.
    return all(
        _fields(n)["health"] == "online" for shard in shards for n in _fields(shard)["nodes"]
    )


def _fields(entry: Any) -> dict[str, Any]:
    if isinstance(entry, dict):
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    return {
        (entry[i].decode() if isinstance(entry[i], bytes) else entry[i]): (
            entry[i + 1].decode() if isinstance(entry[i + 1], bytes) else entry[i + 1]
        )
        for i in range(0, len(entry), 2)
    }


class RedisCluster(Topology):
    """A Redis Cluster of ``masters`` masters, each with ``replicas_per_master`` replicas.

    Ready only when every node reports ``cluster_state:ok``, knows every other node, and
    every replica is attached to a master with its link up. Roles may change at run time
    (a killed master is replaced by its replica), so `masters` and `replicas` are read live.
    """

    kind = "cluster"

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        node_timeout_ms: int = 3000,
        tls: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tls = tls  # TLS only: clients, the cluster bus and replication
        self.tls_files: TlsFiles | None = None
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("RedisCluster needs at least one master")
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms

    def options(self) -> dict[str, Any]:
        return {
            "masters": self.master_count,
            "replicas_per_master": self.replicas_per_master,
            "node_timeout_ms": self.node_timeout_ms,
            "tls": self.tls,
        }

    @property
    def ca_file(self) -> str | None:
        """The CA certificate to trust (``ssl_ca_certs``) when started with ``tls=True``."""
        return str(self.tls_files.ca) if self.tls_files else None

    @property
    def nodes(self) -> list[RedisServer]:
        return self.processes  # type: ignore[return-value]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, as redis-py's ``RedisCluster`` accepts them."""
        return [(HOST, node.port) for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def _build(self, root: Path, ports: Sequence[int] | None) -> list[Any]:
        total = self.master_count * (1 + self.replicas_per_master)
        given = ports
        if ports is None:
            ports = [pick_port(with_bus=True) for _ in range(total)]
        settings = {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(self.node_timeout_ms),
        }
        if self.tls:
            self.tls_files = certificates_in(root / "tls", restoring=given is not None)
            settings |= {"tls-cluster": "yes", "tls-replication": "yes"}
        return [
            RedisServer(
                port, root / f"node{i}", label=f"node{i}", extra=settings, tls=self.tls_files
            )
            for i, port in enumerate(ports)
        ]

    # --- forming and readiness ---------------------------------------------------------

    def _wait_ready(self, timeout: float) -> None:
        for node in self.nodes:
            node.wait_ready(timeout)
        if all(cluster_info(node)["cluster_known_nodes"] == "1" for node in self.nodes):
            self._form(timeout)
        wait_until(self.is_healthy, timeout=timeout, what="the cluster", errors=_WAIT_ERRORS)

    def _form(self, timeout: float) -> None:
        masters = self.nodes[: self.master_count]
        replicas = self.nodes[self.master_count :]
        ids = {}
        for epoch, node in enumerate(self.nodes, start=1):
            with node.client() as conn:
                ids[node.port] = conn.execute_command("CLUSTER", "MYID")
                conn.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for i, node in enumerate(masters):
            low = SLOTS * i // self.master_count
            high = SLOTS * (i + 1) // self.master_count
            with node.client() as conn:
                conn.execute_command("CLUSTER", "ADDSLOTS", *range(low, high))
        with self.nodes[0].client() as conn:
            for node in self.nodes[1:]:
                conn.execute_command("CLUSTER", "MEET", HOST, node.port)

        def everyone_known() -> bool:
            return all(
                len([v for v in cluster_nodes(node) if v.healthy]) == len(self.nodes)
                for node in self.nodes
            )

        wait_until(
            everyone_known, timeout=timeout, what="cluster nodes to meet", errors=_WAIT_ERRORS
        )
        for i, node in enumerate(replicas):
            master = masters[i % self.master_count]
            with node.client() as conn:
                conn.execute_command("CLUSTER", "REPLICATE", ids[master.port])

    def is_healthy(self) -> bool:
        """Every node up, agreeing on a full slot map and on each master's attached replicas."""
        if not all(node.running for node in self.nodes):
            return False
        for node in self.nodes:
            if cluster_info(node).get("cluster_state") != "ok":
                return False
            views = cluster_nodes(node)
            if len(views) != len(self.nodes) or not all(v.healthy for v in views):
                return False
            masters = [v for v in views if v.is_master and v.slots]
            if len(masters) != self.master_count:
                return False
            for master in masters:
                attached = [v for v in views if v.master_id == master.node_id]
                if len(attached) != self.replicas_per_master:
                    return False
            if not _all_online(node):
                return False
        return all(
            replica.info("replication").get("master_link_status") == "up"
            for replica in self.replicas
        )

    # --- roles, read live ------------------------------------------------------------------

    def _views(self) -> list[ClusterNodeView]:
        for node in self.nodes:
            if node.running:
                try:
                    return cluster_nodes(node)
                except redis.RedisError:
                    continue
        raise redis.ConnectionError("no cluster node answers CLUSTER NODES")

    def _node_at(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    @property
    def masters(self) -> list[RedisServer]:
        """The nodes that are masters now, in the order of their first slot."""
        views = sorted((v for v in self._views() if v.is_master and v.slots), key=lambda v: v.slots)
        return [self._node_at(v.port) for v in views]

    @property
    def replicas(self) -> list[RedisServer]:
        """The nodes that are replicas now."""
        return [self._node_at(v.port) for v in self._views() if "slave" in v.flags]

    def node_id(self, node: RedisServer) -> str:
        with node.client() as conn:
            return str(conn.execute_command("CLUSTER", "MYID"))

    def slot_of(self, key: str | bytes) -> int:
        """The slot of ``key``, as the server computes it (``CLUSTER KEYSLOT``)."""
        with self.masters[0].client() as conn:
            return int(conn.execute_command("CLUSTER", "KEYSLOT", key))

    def owner_of(self, slot: int) -> RedisServer:
        """The master serving ``slot`` now."""
        for view in self._views():
            if view.is_master and view.owns(slot):
                return self._node_at(view.port)
        raise LookupError(f"no master owns slot {slot}")

    # --- live resharding -------------------------------------------------------------------

    def begin_slot_migration(self, slot: int, target: RedisServer) -> SlotMigration:
        """Mark ``slot`` MIGRATING on its owner and IMPORTING on ``target``; move no key yet.

        Between this and `SlotMigration.finish`, clients get ASK replies for moved keys.
        """
        return SlotMigration(self, slot, self.owner_of(slot), self._own_node(target))

    def migrate_slot(self, slot: int, target: RedisServer, timeout: float = 30.0) -> None:
        """Move ``slot`` and all its keys to ``target``; return once every node agrees."""
        self.begin_slot_migration(slot, target).finish(timeout)

    def _own_node(self, node: RedisServer) -> RedisServer:
        self._own(node)
        return node

    # --- Topology API ----------------------------------------------------------------------

    def flush(self) -> None:
        for master in self.masters:
            with master.client() as conn:
                conn.flushall()

    def health(self) -> list[HealthRow]:
        rows = []
        for node in self.nodes:
            try:
                state = cluster_info(node)["cluster_state"]
                mine = next(v for v in cluster_nodes(node) if "myself" in v.flags)
                role = "master" if mine.is_master else "replica"
                owned = sum(high - low + 1 for low, high in mine.slots)
                detail = f"cluster_state:{state}, {owned} slots"
                rows.append(HealthRow(self.kind, node.label, node.url, role, state == "ok", detail))
            except (redis.RedisError, StopIteration) as exc:
                rows.append(HealthRow(self.kind, node.label, node.url, "?", False, str(exc)))
        return rows

    def describe(self) -> dict[str, Any]:
        return {"startup_nodes": [node.address for node in self.nodes]}


class SlotMigration:
    """One slot moving from ``source`` to ``target``, step by step (the resharding protocol)."""

    BATCH = 100

    def __init__(
        self, cluster: RedisCluster, slot: int, source: RedisServer, target: RedisServer
    ) -> None:
        if source is target:
            raise ValueError(f"slot {slot} is already served by {target.label}")
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target
        self.source_id = cluster.node_id(source)
        self.target_id = cluster.node_id(target)
        with target.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.source_id)
        with source.client() as conn:
            conn.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.target_id)

    def move_keys(self, limit: int | None = None) -> int:
        """MIGRATE up to ``limit`` keys (all when None) of the slot; return how many moved."""
        moved = 0
        with self.source.client(decode_responses=False) as conn:
            while limit is None or moved < limit:
                count = self.BATCH if limit is None else min(self.BATCH, limit - moved)
                keys = conn.execute_command("CLUSTER", "GETKEYSINSLOT", self.slot, count)
                if not keys:
                    break
                conn.execute_command(
                    "MIGRATE", HOST, self.target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
                )
                moved += len(keys)
        return moved

    def finish(
        self, timeout: float = 30.0, *, source_first: bool = False, gap: float = 0.0
    ) -> None:
        """Move the remaining keys, assign the slot to ``target`` everywhere, and wait.

        The target is told first (it bumps its epoch), then the source, then every other
        master, as redis-cli does. ``source_first`` tells the source first instead, as a
        hand-written script or a reshard that crashed half way does: for ``gap`` seconds
        the source answers MOVED to the target and the target MOVED back to the source.
        """
        self.move_keys()
        others = [m for m in self.cluster.masters if m not in (self.source, self.target)]
        order = [self.source, self.target] if source_first else [self.target, self.source]
        for i, node in enumerate([*order, *others]):
            with node.client() as conn:
                conn.execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", self.target_id)
            if i == 0 and gap:
                time.sleep(gap)

        def everyone_agrees() -> bool:
            for node in self.cluster.nodes:
                owner = next(
                    (v for v in cluster_nodes(node) if v.is_master and v.owns(self.slot)), None
                )
                if owner is None or owner.node_id != self.target_id:
                    return False
            return True

        wait_until(
            everyone_agrees,
            timeout=timeout,
            what=f"every node to see slot {self.slot} on {self.target.label}",
            errors=_WAIT_ERRORS,
        )
