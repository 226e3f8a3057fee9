"""Redis Cluster as a topology (after segmentio/redisc, built over redis-py).

Ours: the slot map (read with CLUSTER SHARDS, falling back to CLUSTER SLOTS, and patched from
every MOVED reply), the lean per-node connection pools of `RedisShard`, per-slot grouping of
multi-key calls into one pipeline per node, `bind`, and the redirect loop driven by the small
`RedirectPolicy`. redis-py's ``RedisCluster`` answers every command through a generic
dispatcher that costs more than the round trip and splits ``mget_nonatomic`` into one
command per key; it stays available, built from the same settings, as `Cluster.redis`.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.retry import Retry

from shardcache.config import RedisAddress
from shardcache.connections import IO_ERRORS, RecoveringBatch, RedisShard
from shardcache.dialects import REDIS
from shardcache.errors import (
    ClosedError,
    CommandError,
    ConfigurationError,
    CrossSlotError,
    RedirectsExhaustedError,
    ShardError,
    ShardUnavailableError,
)
from shardcache.hashing import CLUSTER_SLOTS, slot
from shardcache.lifecycle import forget_after_fork
from shardcache.logs import RateLimited
from shardcache.protocols import REDIS_CAPABILITIES, Dialect, Shard
from shardcache.stats import ShardReport, redis_report
from shardcache.topologies.redirects import Redirect, RedirectPolicy, is_tryagain

__all__ = ["Binding", "Cluster", "ClusterNode"]

_storms = RateLimited(logging.getLogger(__name__))

# After a node failed, the slot map is re-read to see whether a failover moved its slots, but
# not more often than this (seconds): a dead node's callers would otherwise each read it.
MAP_MAX_AGE_ON_FAILURE = 0.1
# And while the map still names the failed node, its replicas are asked whether one was
# promoted, at most this often (seconds): a ROLE round trip, so a promotion is seen at once.
REPLICA_PROBE_EVERY = 0.01


# Multi-key commands that can be split into one command per key: (the one-key command,
# how to combine the one-key replies into the multi-key reply).
_SPLITTABLE: dict[bytes, tuple[bytes, Callable[[list[Any]], Any]]] = {
    b"MGET": (b"GET", list),
    b"DEL": (b"DEL", sum),
    b"UNLINK": (b"UNLINK", sum),
    b"EXISTS": (b"EXISTS", sum),
}


@dataclass(frozen=True)
class _SlotMap:
    """Who serves each slot: a master and its replicas (``host:port`` names), and the master
    nodes themselves for the hot path. Never changed in place: a refresh or a MOVED builds a
    new one, swapped in by one assignment, so no reader sees half of an update."""

    masters: tuple[str | None, ...]
    replicas: tuple[tuple[str, ...], ...]
    owners: tuple[ClusterNode, ...] = ()

    def moved(self, slot_number: int, address: str, owner: ClusterNode) -> _SlotMap:
        """This map with ``slot_number`` served by ``address`` now. The slot keeps the
        replicas it had (less the new owner): after a failover they follow the promoted
        replica, and after a reshard a stale one answers MOVED, which is followed."""
        masters, replicas, owners = list(self.masters), list(self.replicas), list(self.owners)
        masters[slot_number] = address
        replicas[slot_number] = tuple(r for r in replicas[slot_number] if r != address)
        owners[slot_number] = owner
        return _SlotMap(tuple(masters), tuple(replicas), tuple(owners))


class Cluster:
    """A Redis Cluster, as a topology for `Cache` and as a redisc-style client.

    ``startup_nodes`` are ``host:port`` strings, ``(host, port)`` pairs or redis URLs (their
    credentials and TLS apply to every node). With ``read_from_replicas=True`` the cache's
    reads go to a replica of the key's slot (they may be slightly stale). Every command
    follows MOVED, ASK, TRYAGAIN and CLUSTERDOWN for up to ``redirect_budget`` seconds
    (at most ``max_attempts`` attempts), then raises `RedirectsExhaustedError`.
    """

    capabilities = REDIS_CAPABILITIES
    dialect: Dialect = REDIS

    def __init__(
        self,
        startup_nodes: Sequence[str | tuple[str, int]],
        *,
        read_from_replicas: bool = False,
        max_attempts: int = 32,
        redirect_budget: float = 1.0,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        write_timeout: float | None = None,
        retry_timeout: float = 1.0,
        max_connections_per_node: int = 64,
        pool_timeout: float | None = None,
        username: str | None = None,
        password: str | None = None,
        **connection_options: Any,
    ) -> None:
        if isinstance(startup_nodes, str) or not startup_nodes:
            raise ConfigurationError("Cluster needs a list of one or more startup nodes")
        addresses = [
            RedisAddress(host=node[0], port=int(node[1]))
            if isinstance(node, tuple)
            else RedisAddress.parse(node)
            for node in startup_nodes
        ]
        first = addresses[0]
        self._template = first.connection_kwargs(
            socket_connect_timeout=connect_timeout,
            socket_timeout=read_timeout
            if write_timeout is None
            else max(read_timeout, write_timeout),
            retry=Retry(NoBackoff(), 0),
            **connection_options,
        )
        if username is not None:
            self._template["username"] = username
        if password is not None:
            self._template["password"] = password
        self._template["db"] = 0  # a cluster has only database 0
        self._tls = issubclass(
            self._template.get("connection_class", redis.Connection), redis.SSLConnection
        )
        self._startup = [f"{a.host}:{a.port}" for a in addresses]
        self._max_connections = max_connections_per_node
        self._pool_timeout = connect_timeout if pool_timeout is None else pool_timeout
        self._retry_timeout = retry_timeout
        self.read_from_replicas = read_from_replicas
        self.policy = RedirectPolicy(max_attempts, budget=redirect_budget)
        self._nodes: dict[tuple[str, bool], ClusterNode] = {}
        self._nodes_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._refreshed_at = 0.0
        self._probed_at = 0.0
        self._map = _SlotMap((None,) * CLUSTER_SLOTS, ((),) * CLUSTER_SLOTS)
        self._map_lock = threading.Lock()  # patches from concurrent MOVED replies in turn
        self._slot_memo: dict[bytes, int] = {}
        self._redis: redis.cluster.RedisCluster | None = None
        self.closed = False
        self.refresh()
        forget_after_fork(self)

    def _after_fork(self) -> None:
        # A parent thread may have held these at the fork: the child makes its own.
        self._nodes_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._map_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<Cluster {sorted({m for m in self._map.masters if m})}>"

    # --- nodes and the slot map ----------------------------------------------------------------

    def node(self, address: str, *, readonly: bool = False) -> ClusterNode:
        """The node at ``host:port`` (created on first use). ``readonly`` connections send
        READONLY, as reads from a replica need."""
        found = self._nodes.get((address, readonly))
        if found is not None:
            return found
        with self._nodes_lock:
            found = self._nodes.get((address, readonly))
            if found is None:
                if self.closed:
                    raise ClosedError("this Cluster is closed")
                host, _, port = address.rpartition(":")
                kwargs = {**self._template, "host": host, "port": int(port)}
                shard = RedisShard(
                    address,
                    kwargs,
                    max_connections=self._max_connections,
                    pool_timeout=self._pool_timeout,
                    readonly=readonly,
                    retry_timeout=self._retry_timeout,
                )
                found = self._nodes[(address, readonly)] = ClusterNode(self, shard)
            return found

    def refresh(self, *, unless_newer_than: float = 0.0, first: str | None = None) -> None:
        """Re-read the slot map from the first node that answers (CLUSTER SHARDS, or CLUSTER
        SLOTS on servers before 7.0), asking node ``first`` first. Concurrent callers share
        one refresh; with ``unless_newer_than``, a map read that many seconds ago or less
        is kept."""
        requested = time.monotonic()
        if unless_newer_than and requested - self._refreshed_at < unless_newer_than:
            return
        with self._refresh_lock:
            if self._refreshed_at > requested:
                return  # another thread refreshed while we waited
            known = [m for m in dict.fromkeys(self._map.masters) if m]
            errors: list[str] = []
            asked = [first] if first else []
            for address in dict.fromkeys([*asked, *known, *self._startup]):
                try:
                    new_map = self._read_map(self.node(address))
                except (ShardError, ValueError, KeyError, IndexError) as exc:
                    errors.append(f"{address}: {exc}")
                    continue
                nodes = {a: self.node(a) for a in set(new_map.masters) if a}
                owners = tuple(nodes[a] for a in new_map.masters if a)
                with self._map_lock:
                    old = self._map.masters
                    self._map = _SlotMap(new_map.masters, new_map.replicas, owners)
                self._refreshed_at = time.monotonic()
                if old[0] is not None:
                    pairs = enumerate(zip(old, new_map.masters, strict=True))
                    self._slots_moved({n for n, (was, now) in pairs if was != now})
                return
        raise ShardUnavailableError(
            "no cluster node answered with a slot map: " + "; ".join(errors),
            sent=False,
        )

    def _read_map(self, node: ClusterNode) -> _SlotMap:
        masters: list[str | None] = [None] * CLUSTER_SLOTS
        replicas: list[tuple[str, ...]] = [()] * CLUSTER_SLOTS
        try:
            shards = node.shard.execute(b"CLUSTER", b"SHARDS")
        except CommandError:
            shards = None
        if shards is not None:
            default_host = node.shard.id.rpartition(":")[0]
            for owner, copies, ranges in parse_shards(shards, self._tls, default_host):
                for low, high in ranges:
                    for number in range(low, high + 1):
                        masters[number] = owner
                        replicas[number] = copies
        else:
            for low, high, owner_info, *replica_infos in node.shard.execute(b"CLUSTER", b"SLOTS"):
                owner = f"{owner_info[0].decode()}:{owner_info[1]}"
                copies = tuple(f"{r[0].decode()}:{r[1]}" for r in replica_infos)
                for number in range(int(low), int(high) + 1):
                    masters[number] = owner
                    replicas[number] = copies
        if None in masters:
            raise ValueError(f"slot {masters.index(None)} has no master (cluster incomplete)")
        return _SlotMap(tuple(masters), tuple(replicas))

    def _learn(self, redirect: Redirect) -> None:
        # A MOVED reply is the news that one slot changed owner: patch just that slot.
        owner = self.node(redirect.address)
        with self._map_lock:
            self._map = self._map.moved(redirect.slot, redirect.address, owner)
        self._slots_moved({redirect.slot})

    def _slots_moved(self, slots: set[int]) -> None:
        """Near caches drop what they read from ``slots`` (and every read in flight): a
        value read from the old owner is no longer tracked by the new one."""
        if not slots:
            return
        caches = {
            cache
            for node in list(self._nodes.values())
            if node.shard.tracker is not None
            for cache in list(node.shard.tracker.caches)
        }
        for cache in caches:
            cache.drop_slots(slots)

    def master_of(self, slot_number: int) -> ClusterNode:
        return self._map.owners[slot_number]

    def _route(self, slot_number: int, read: bool) -> ClusterNode:
        if read and self.read_from_replicas:
            copies = self._map.replicas[slot_number]
            if copies:
                return self.node(random.choice(copies), readonly=True)
        return self.master_of(slot_number)

    # --- redisc's controls -----------------------------------------------------------------

    def slot(self, key: str | bytes) -> int:
        """The slot of ``key`` (CRC16 of its ``{hash tag}`` or of the whole key)."""
        data = key.encode() if isinstance(key, str) else key
        found = self._slot_memo.get(data)
        if found is None:
            if len(self._slot_memo) >= 100_000:
                self._slot_memo.clear()
            found = self._slot_memo[data] = slot(data)
        return found

    def split_by_slot(self, keys: Iterable[str | bytes]) -> dict[int, list[str | bytes]]:
        """``keys`` grouped by slot, each group in the caller's order."""
        groups: dict[int, list[str | bytes]] = {}
        for key in keys:
            groups.setdefault(self.slot(key), []).append(key)
        return groups

    def bind(self, *keys: str | bytes, read_only: bool = False) -> Binding:
        """A connection pinned to the node serving the slot of ``keys`` (all in one slot, or
        `CrossSlotError`); with ``read_only`` to one of its replicas, after READONLY."""
        if not keys:
            raise ValueError("bind needs at least one key")
        slots = {self.slot(key) for key in keys}
        if len(slots) != 1:
            raise CrossSlotError(f"keys {keys!r} span {len(slots)} slots: {sorted(slots)}")
        (number,) = slots
        node = self.master_of(number)
        if read_only:
            copies = self._map.replicas[number]
            if copies:
                node = self.node(random.choice(copies), readonly=True)
        return Binding(node.shard, number)

    def stats(self) -> dict[str, dict[str, Any]]:
        """INFO highlights of every node: role, keys, memory, clients, ops/s, slots."""
        result: dict[str, dict[str, Any]] = {}
        owners = {m for m in self._map.masters if m}
        everyone = sorted(owners | {r for rs in set(self._map.replicas) for r in rs})
        for address in everyone:
            node = self.node(address)
            try:
                info = node.client().info()
            except redis.RedisError as exc:
                result[address] = {"error": str(exc)}
                continue
            result[address] = {
                "role": info.get("role"),
                "slots": sum(1 for owner in self._map.masters if owner == address),
                "keys": info.get("db0", {}).get("keys", 0),
                "used_memory": info.get("used_memory"),
                "connected_clients": info.get("connected_clients"),
                "ops_per_sec": info.get("instantaneous_ops_per_sec"),
            }
        return result

    def redis(self) -> redis.cluster.RedisCluster:
        """redis-py's own cluster client on the same nodes and settings, for every command
        the cache layer does not cover."""
        if self._redis is None:
            host, _, port = self._startup[0].rpartition(":")
            options = {
                k: v
                for k, v in self._template.items()
                if k not in {"host", "port", "db", "retry", "connection_class"}
            }
            if self._template.get("connection_class") is redis.SSLConnection:
                options["ssl"] = True
            if self.read_from_replicas:  # redis-py >= 5.3 names it a balancing strategy
                strategy = getattr(redis.cluster, "LoadBalancingStrategy", None)
                if strategy is None:
                    options["read_from_replicas"] = True
                else:
                    options["load_balancing_strategy"] = strategy.ROUND_ROBIN
            self._redis = redis.cluster.RedisCluster(host=host, port=int(port), **options)
        return self._redis

    # --- the retrying execution path --------------------------------------------------------

    def execute(
        self,
        *args: Any,
        key: bytes,
        idempotent: bool = False,
        read: bool = False,
        node: ClusterNode | None = None,
        first_error: BaseException | None = None,
    ) -> Any:
        """Run one command on the node serving ``key``'s slot, following MOVED / ASK /
        TRYAGAIN / CLUSTERDOWN and re-reading the slot map when a node is unreachable or
        two nodes bounce the slot, for up to the policy's time budget
        (`RedirectsExhaustedError` after that)."""
        number = self.slot(key)
        target = node or self._route(number, read)
        asking = False
        attempt = moves = 0
        error = first_error
        started = 0.0  # the clock starts at the first failure: nothing to pay on success
        policy = self.policy
        while True:
            if error is None:
                try:
                    if asking:
                        return target.shard_asking(args, key)
                    return target.shard.execute(*args, key=key, idempotent=idempotent)
                except (CommandError, ShardUnavailableError) as exc:
                    error = exc
            if isinstance(error, ShardUnavailableError):
                # The node did not answer. Retry only where the slot map now names another
                # node that is not known to be down (a failover happened): otherwise the node
                # is simply down, and the caller hears it now instead of after the budget,
                # and after this in microseconds (the node's breaker is open).
                if attempt + 1 >= policy.max_attempts:
                    raise error
                target = self._elsewhere(number, read, target, error, idempotent or read)
                asking = False
                attempt += 1
                error = None
                continue
            now = time.monotonic()
            started = started or now
            decision = policy.decide(
                error, attempt, idempotent=idempotent or read, elapsed=now - started, moves=moves
            )
            if decision.action == "raise":
                if attempt > 0 and policy.follows(error):
                    raise RedirectsExhaustedError(
                        f"gave up after {attempt + 1} attempts in {now - started:.2f}s "
                        f"(budget {policy.budget:g}s), last: {error}",
                        shard=target.id,
                        key=key,
                    ) from error
                raise error
            if decision.delay:
                time.sleep(decision.delay)
            if moves >= 2:  # the slot bounces between nodes: a reshard or a failover
                _storms.warning(
                    str(number),
                    "shardcache: MOVED storm: slot %d redirected %d times in one call (last to "
                    "%s); backing off and re-reading the slot map",
                    number,
                    moves,
                    decision.redirect.address if decision.redirect else "?",
                )
            if decision.action == "moved":
                assert decision.redirect is not None
                self._learn(decision.redirect)
                target, asking = self.node(decision.redirect.address), False
                moves += 1
            elif decision.action == "ask":
                assert decision.redirect is not None
                target, asking = self.node(decision.redirect.address), True
                self._slots_moved({decision.redirect.slot})  # moving: the keys change hands
            elif decision.action == "refresh":
                with contextlib.suppress(ShardUnavailableError):
                    self.refresh()  # if no node answers yet, the next attempt says so
                target, asking = self._route(number, read), False
                if decision.redirect is not None:
                    moves += 1
            attempt += 1
            error = None

    def _elsewhere(
        self,
        number: int,
        read: bool,
        failed: ClusterNode,
        error: ShardUnavailableError,
        retry_safe: bool,
    ) -> ClusterNode:
        """Where to retry a command on slot ``number`` whose node ``failed`` did not answer,
        or ``error`` raised when there is nowhere (see `execute`)."""
        if error.sent and not retry_safe:
            raise error  # a write may have been applied: retrying could apply it twice
        with contextlib.suppress(ShardUnavailableError):
            self.refresh(unless_newer_than=MAP_MAX_AGE_ON_FAILURE)
        target = self._route(number, read)
        if target is failed or target.shard.breaker.is_open:
            # The other nodes learn of a promotion by gossip, the promoted replica at once:
            # ask the slot's replicas (cheaply, and not too often) whether one is master now.
            promoted = self._promoted_replica(number)
            if promoted is None:
                raise error
            with contextlib.suppress(ShardUnavailableError):
                self.refresh(first=promoted)
            target = self._route(number, read)
            if target is failed or target.shard.breaker.is_open:
                raise error
        return target

    def _promoted_replica(self, number: int) -> str | None:
        """A replica of slot ``number`` that says it is a master now (ROLE); None if none
        does, or if the replicas were asked less than `REPLICA_PROBE_EVERY` seconds ago."""
        now = time.monotonic()
        if now - self._probed_at < REPLICA_PROBE_EVERY:
            return None
        self._probed_at = now
        for address in self._map.replicas[number]:
            try:
                role = self.node(address).shard.execute(b"ROLE")
            except ShardError:
                continue
            if role and role[0] in (b"master", "master"):
                return address
        return None

    # --- the shard protocol --------------------------------------------------------------------

    def shard_for(self, key: bytes, *, read: bool = False) -> ClusterNode:
        return self._route(self.slot(key), read)

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        # One run per slot (multi-key commands must stay in one slot); the runs of one
        # node travel in one pipeline.
        keys = keys if isinstance(keys, list) else list(keys)
        known = list(map(self._slot_memo.get, keys))
        if None in known:
            known = [self.slot(k) if n is None else n for k, n in zip(keys, known, strict=True)]
        by_slot: dict[int, list[bytes]] = {}
        for key, number in zip(keys, known, strict=True):
            run = by_slot.get(number)  # type: ignore[arg-type]
            if run is None:
                by_slot[number] = [key]  # type: ignore[index]
            else:
                run.append(key)
        groups: dict[Shard, list[list[bytes]]] = {}
        owners = self._map.owners
        replicas = read and self.read_from_replicas
        for number, run in by_slot.items():
            node = self._route(number, True) if replicas else owners[number]
            runs = groups.get(node)
            if runs is None:
                groups[node] = [run]
            else:
                runs.append(run)
        return groups

    def shards(self) -> list[ClusterNode]:
        """Every master."""
        return [self.node(address) for address in dict.fromkeys(self._map.masters) if address]

    def reports(self) -> list[ShardReport]:
        """A `ShardReport` of every node, masters with their slot ranges, then replicas."""
        ranges: dict[str, list[list[int]]] = {}
        for number, owner in enumerate(self._map.masters):
            if owner is None:
                continue
            runs = ranges.setdefault(owner, [])
            if runs and runs[-1][1] == number - 1:
                runs[-1][1] = number
            else:
                runs.append([number, number])
        replicas: dict[str, str] = {}
        for number, copies in enumerate(self._map.replicas):
            for copy in copies:
                replicas.setdefault(copy, self._map.masters[number] or "")
        found = []
        for address, runs in ranges.items():
            slots = ",".join(f"{low}-{high}" if low != high else str(low) for low, high in runs)
            found.append(redis_report(self.node(address).shard, group=f"slots {slots}"))
        for address, master in replicas.items():
            found.append(redis_report(self.node(address).shard, group=f"replica of {master}"))
        return found

    def close(self) -> None:
        """Close every connection to every node, sync and asyncio; later calls raise
        `ClosedError`."""
        with self._nodes_lock:
            self.closed = True
            for node in self._nodes.values():
                node.shard.close()
        if self._redis is not None:
            self._redis.close()


def _pairs(flat: Any) -> dict[bytes, Any]:
    """CLUSTER SHARDS entries come as flat [name, value, ...] lists (RESP2) or maps."""
    if isinstance(flat, dict):
        return {k if isinstance(k, bytes) else str(k).encode(): v for k, v in flat.items()}
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def parse_shards(
    shards: Any, tls: bool, default_host: str
) -> list[tuple[str | None, tuple[str, ...], list[tuple[int, int]]]]:
    """A CLUSTER SHARDS reply as ``(owner, online replicas, slot ranges)`` per shard.

    Each node lists a plaintext ``port`` and a ``tls-port`` apart (only those it listens
    on): the TLS one is dialled when ``tls``, the other otherwise, whichever exists else.
    During a failover a shard may list the failed master beside the new one, so the owner
    is an online master when there is one.
    """
    ports = (b"tls-port", b"port") if tls else (b"port", b"tls-port")
    parsed = []
    for shard in shards:
        fields = _pairs(shard)
        owner: str | None = None
        owner_online = False
        found = []
        for member in fields[b"nodes"]:
            info = _pairs(member)
            port = next((info[name] for name in ports if info.get(name)), None)
            if port is None:
                continue
            host = (info.get(b"ip") or info.get(b"endpoint") or b"").decode()
            address = f"{host or default_host}:{int(port)}"
            online = info.get(b"health") == b"online"
            if info.get(b"role") == b"master":
                if owner is None or (online and not owner_online):
                    owner, owner_online = address, online
            elif online:
                found.append(address)
        ranges = fields[b"slots"]
        pairs = [(int(low), int(high)) for low, high in zip(ranges[::2], ranges[1::2], strict=True)]
        parsed.append((owner, tuple(found), pairs))
    return parsed


class ClusterNode:
    """One cluster node as a shard of the protocol: its commands and batches follow
    redirects through the cluster's retrying path."""

    def __init__(self, cluster: Cluster, shard: RedisShard) -> None:
        self.cluster = cluster
        self.shard = shard
        self.id = shard.id

    def __repr__(self) -> str:
        return f"<ClusterNode {self.id}>"

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        if key is None:  # a command for this node itself (FLUSHDB, SCAN, INFO ...)
            return self.shard.execute(*args, idempotent=idempotent)
        return self.cluster.execute(*args, key=key, idempotent=idempotent, node=self)

    def shard_asking(self, args: Sequence[Any], key: bytes) -> Any:
        """``ASKING`` then the command, in one round trip (the ASK half of a migration)."""
        _, reply = self.shard.pipeline([(b"ASKING",), args])
        if isinstance(reply, CommandError):
            reply.key = key
            raise reply
        return reply

    def begin(self, commands: Sequence[Sequence[Any]]) -> _ClusterBatch:
        return _ClusterBatch(self, commands)

    # What `shardcache.aio` needs: the asyncio path sends to `leaf`, and hands a redirect or
    # an unreachable node to this node's sync repairs (in a worker thread).

    def leaf(self) -> RedisShard:
        return self.shard

    def recoverable(self, error: ShardError) -> bool:
        return isinstance(error, ShardUnavailableError) or self.cluster.policy.follows(error)

    def recover(
        self,
        args: Sequence[Any],
        key: bytes | None,
        idempotent: bool,
        error: ShardError,
        leaf: RedisShard,
    ) -> Any:
        if key is None:
            raise error  # a command for this very node: nowhere else to send it
        return self.cluster.execute(
            *args, key=key, idempotent=idempotent, node=self, first_error=error
        )

    def settle(
        self,
        commands: Sequence[Sequence[Any]],
        leaf: RedisShard,
        outcome: list[Any] | ShardUnavailableError,
    ) -> list[Any]:
        return _ClusterBatch(self, commands, outcome=outcome).settle(outcome)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return self.begin(commands).finish()

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        return self.shard.scan(match, count)

    def client(self) -> redis.Redis:
        return self.shard.client()

    def close(self) -> None:
        self.shard.close()


class _ClusterBatch(RecoveringBatch):
    """A batch on one node whose redirected replies are retried one by one, so that a
    slot moving mid-batch costs a few extra round trips, not an error."""

    def __init__(
        self,
        node: ClusterNode,
        commands: Sequence[Sequence[Any]],
        *,
        outcome: list[Any] | ShardUnavailableError | None = None,
    ) -> None:
        self.node = node
        super().__init__(node.shard, commands, outcome=outcome)

    def repair(self, replies: list[Any]) -> list[Any]:
        follows = self.node.cluster.policy.follows
        for i, reply in enumerate(replies):
            if isinstance(reply, CommandError) and follows(reply):
                replies[i] = self._retry(self.commands[i], reply)
        return replies

    def _retry(self, command: Sequence[Any], error: BaseException) -> Any:
        cluster = self.node.cluster
        try:
            if len(command) > 2 and command[0] in _SPLITTABLE and is_tryagain(error):
                # A slot half migrated: some keys are here, some on the target, so the
                # multi-key command fails until the migration ends. One key at a time, each
                # following its own ASK, works now.
                single, combine = _SPLITTABLE[command[0]]
                return combine(
                    [cluster.execute(single, key, key=key, node=self.node) for key in command[1:]]
                )
            return cluster.execute(*command, key=command[1], node=self.node, first_error=error)
        except ShardError as exc:
            return exc

    def recover(self, failure: ShardUnavailableError) -> list[Any]:
        # The node itself failed. If the map now sends these slots elsewhere (a failover
        # happened), run the commands there; if not, the node is simply down.
        cluster = self.node.cluster
        if failure.sent and not self.only_reads:
            raise failure  # a write may have been applied: retrying could apply it twice
        with contextlib.suppress(ShardUnavailableError):
            cluster.refresh(unless_newer_than=MAP_MAX_AGE_ON_FAILURE)
        if any(cluster.master_of(cluster.slot(c[1])) is self.node for c in self.commands):
            raise failure
        return [self._retry(command, failure) for command in self.commands]


class Binding:
    """A pooled connection pinned to the node serving one slot (redisc's ``Bind``): its
    commands are sent as they are, with no redirect following. Close it, or use ``with``."""

    def __init__(self, shard: RedisShard, slot_number: int) -> None:
        self.shard = shard
        self.slot = slot_number
        self._conn: AbstractConnection | None = shard.pool.acquire()

    def __enter__(self) -> Binding:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def address(self) -> str:
        return self.shard.id

    def _connection(self) -> AbstractConnection:
        if self._conn is None:
            raise ShardUnavailableError("this binding is closed", shard=self.shard.id)
        return self._conn

    def execute(self, *args: Any) -> Any:
        """One command; an error reply raises `CommandError` (see `is_moved` and friends)."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Several commands in one round trip; error replies raise the first `CommandError`."""
        conn = self._connection()
        try:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            replies = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:
                    replies.append(CommandError(str(exc), shard=self.shard.id, reply=exc))
        except IO_ERRORS as exc:
            self.shard.pool.discard(conn)
            self._conn = None
            raise ShardUnavailableError(str(exc), shard=self.shard.id) from exc
        for reply in replies:
            if isinstance(reply, CommandError):
                raise reply
        return replies

    def close(self) -> None:
        """Give the connection back to the node's pool."""
        if self._conn is not None:
            self.shard.pool.release(self._conn)
            self._conn = None
