"""The shard protocol: what the cache layer needs from any topology.

A topology answers two questions: which shard holds a key (`Topology.shard_for`,
`Topology.group`), and how to run commands on a shard (`Shard.execute` for one command,
`Shard.begin` / `Batch.finish` for many in one round trip). The cache layer is written once
against these small protocols; each topology (hash pool, cluster, sentinel, memcache)
implements them in its own module, and each family of servers says what the cache wants in
its own commands (`Dialect`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import redis

__all__ = [
    "COMMANDS",
    "LOCKS",
    "REDIS_CAPABILITIES",
    "SCAN",
    "SCRIPTS",
    "STATES",
    "TTL",
    "Dialect",
    "LoopPools",
    "PendingBatch",
    "RecoveringShard",
    "Shard",
    "Stateful",
    "Topology",
]


class PendingBatch(Protocol):
    """Commands already sent to one shard, whose replies have not been read yet."""

    def finish(self) -> list[Any]:
        """Read every reply, in order. An error reply is a `CommandError` in its place; a
        socket error raises `ShardUnavailableError` for the whole batch."""
        ...


@runtime_checkable
class Shard(Protocol):
    """One server (or master) holding part of the keys."""

    id: str

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        """Run one command and return its reply (`CommandError` on an error reply,
        `ShardUnavailableError` when the shard cannot be reached). ``idempotent`` commands
        may be retried once on a fresh connection."""
        ...

    def begin(self, commands: Sequence[Sequence[Any]]) -> PendingBatch:
        """Send ``commands`` in one write without waiting; read the replies with ``finish``.
        Beginning on every shard before finishing any lets the shards work in parallel."""
        ...

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """``begin(commands).finish()``: one round trip."""
        ...

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        """Every key matching the glob ``match``, without blocking the server (SCAN)."""
        ...

    def client(self) -> redis.Redis:
        """A full redis-py client on this shard, for what the lean path does not cover."""
        ...

    def close(self) -> None: ...


# What a topology can do beyond get/set/delete/incr, asked by the layers above it (never
# guessed from its class): "scripts" (Lua, for the record store and compare-and-set),
# "scan" (listing keys by pattern: clear by prefix, delete_pattern, iter_keys), "locks"
# (`Cache.lock`), "ttl" (a key's remaining time to live), "shard_states" (shards that can be
# ACTIVE, WRITE_ONLY, WARM_UP or DOWN: the topology is `Stateful`), "commands" (any Redis
# command on the shard of a key: `Cache.command`, hashes, sets and sorted sets).
SCRIPTS, SCAN, LOCKS, TTL, STATES = "scripts", "scan", "locks", "ttl", "shard_states"
COMMANDS = "commands"
REDIS_CAPABILITIES = frozenset({SCRIPTS, SCAN, LOCKS, TTL, COMMANDS})

Command = tuple[Any, ...]


class Dialect(Protocol):
    """How one family of servers says what `Cache` wants: each method returns the command a
    shard of that family runs (Redis command tuples; memcache operations). Replies follow
    one convention whatever the family: a stored ``set`` is not None, a ``delete`` counts
    the keys it removed, ``pttl`` is milliseconds, -1 for no expiry, -2 for a missing key,
    an ``incr_existing`` on a missing key is None, a ``swap`` is 1 when it swapped."""

    def get(self, key: bytes) -> Command: ...
    def mget(self, keys: Sequence[bytes]) -> Command: ...
    def set(self, key: bytes, data: bytes, px: int | None, only_if_absent: bool) -> Command: ...
    def replace(self, key: bytes, data: bytes, px: int | None) -> Command:
        """Store only if the key exists (the reply is None when it does not)."""
        ...

    def delete(self, keys: Sequence[bytes]) -> Command: ...
    def exists(self, key: bytes) -> Command: ...
    def pexpire(self, key: bytes, px: int) -> Command: ...
    def persist(self, key: bytes) -> list[Command]:
        """A batch whose last reply says whether ``key`` exists (now without expiry)."""
        ...

    def pttl(self, key: bytes) -> Command: ...
    def incrby(self, key: bytes, delta: int) -> Command:
        """Add ``delta``, starting a missing key at 0."""
        ...

    def incr_existing(self, key: bytes, delta: int) -> Command: ...
    def swap(self, key: bytes, expected: bytes, new: bytes) -> Command:
        """Replace ``expected`` by ``new`` keeping the time to live; 0 if it changed."""
        ...

    def flush(self) -> Command:
        """Empty the shard's whole database."""
        ...

    def unscripted(self, command: Command) -> Command | None:
        """The command to send instead when the server did not know ``command``'s script
        (Redis: EVALSHA becomes EVAL); None when ``command`` is no script call."""
        ...


class Stateful(Protocol):
    """A topology whose shards have states (the "shard_states" capability: memcache)."""

    def update_shard_states(self, states: Sequence[Any]) -> None:
        """Give the shards these states (one `ShardState` or string per shard, in order)."""
        ...


class LoopPools(Protocol):
    """A server's asyncio connection pools, one per event loop (`shardcache.aio` builds them;
    the sync shard only retires or shuts them with itself)."""

    @property
    def loops(self) -> int:
        """How many event loops have a pool now."""
        ...

    def retire(self) -> None:
        """Close connections as they come back, and idle ones now."""
        ...

    def shut(self) -> None:
        """`retire`, and refuse every later checkout with `ClosedError`."""
        ...


class RecoveringShard(Shard, Protocol):
    """A Redis shard whose asyncio calls go to one server (`leaf`) and whose topology may
    repair a failure there (a MOVED slot, a failed-over master) in a worker thread: the
    hooks `shardcache.aio` calls around its native asyncio path."""

    def leaf(self) -> Any:
        """The `RedisShard` (one server) commands for this shard go to now, or None while
        there is none (a master being failed over)."""
        ...

    def recoverable(self, error: Any) -> bool:
        """Whether `recover` could do more with ``error`` (a `ShardError`) than raise it."""
        ...

    def recover(
        self, args: Sequence[Any], key: bytes | None, idempotent: bool, error: Any, leaf: Any
    ) -> Any:
        """Repair a failed command sent to ``leaf`` and return its reply (blocking)."""
        ...

    def settle(self, commands: Sequence[Sequence[Any]], leaf: Any, outcome: Any) -> list[Any]:
        """Repair the replies, or the failure, of a batch sent to ``leaf`` (blocking)."""
        ...


@runtime_checkable
class Topology(Protocol):
    """Which shard holds which key, and the shards themselves."""

    capabilities: frozenset[str]
    """What it can do beyond the basics: `SCRIPTS`, `SCAN`, `LOCKS`, `TTL`."""

    dialect: Dialect
    """How its shards are told what to do."""

    def shard_for(self, key: bytes, *, read: bool = False) -> Shard:
        """The shard that holds ``key``. ``read=True`` says only reads will follow, so a
        topology configured for it may answer with a replica."""
        ...

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        """``keys`` grouped by shard, then into runs that one multi-key command (MGET, DEL)
        may carry: one run per shard on a hash pool, one per slot on a cluster. In a batch
        sent to a shard, every command names its (first) key right after the command name."""
        ...

    def shards(self) -> Sequence[Shard]:
        """Every shard that holds keys (masters only), e.g. for ``clear`` and ``scan``."""
        ...

    @property
    def closed(self) -> bool:
        """True after `close`."""
        ...

    def close(self) -> None:
        """Close every connection and stop every thread the topology owns; later calls
        raise `ClosedError`."""
        ...
