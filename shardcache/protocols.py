"""The shard protocol: what the cache layer needs from any topology.

A topology answers two questions: which shard holds a key (`Topology.shard_for`,
`Topology.group`), and how to run commands on a shard (`Shard.execute` for one command,
`Shard.begin` / `Batch.finish` for many in one round trip). The cache layer is written once
against these two small protocols; each topology (hash pool, cluster, sentinel) implements
them in its own module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import redis

__all__ = [
    "LOCKS",
    "REDIS_CAPABILITIES",
    "SCAN",
    "SCRIPTS",
    "PendingBatch",
    "Shard",
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
# (redis-py locks on a shard).
SCRIPTS, SCAN, LOCKS = "scripts", "scan", "locks"
REDIS_CAPABILITIES = frozenset({SCRIPTS, SCAN, LOCKS})


@runtime_checkable
class Topology(Protocol):
    """Which shard holds which key, and the shards themselves."""

    capabilities: frozenset[str]
    """What it can do beyond the basics: `SCRIPTS`, `SCAN`, `LOCKS`."""

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
