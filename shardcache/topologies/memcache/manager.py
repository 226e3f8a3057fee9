"""Which memcached holds a key, and in which state each shard is (godropbox's ShardManager).

States never remap keys: a key's shard is ``shard_func(key, len(states))`` over the whole
list, whatever the states, so a shard going DOWN does not send its keys to another server
(where they would be stale when it returns).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymemcache.client.base import Client
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
)

from shardcache.connections import ConnectionPool
from shardcache.errors import ClosedError, ConfigurationError, InvalidKeyError
from shardcache.fence import Fence
from shardcache.hashing import Ketama, Rendezvous
from shardcache.lifecycle import forget_after_fork
from shardcache.topologies.memcache.model import Item, MemcachedState, ShardState, validate_key

__all__ = [
    "ShardFunc",
    "ShardHandle",
    "ShardManager",
    "ShardMapping",
    "StaticShardManager",
    "crc32_shard_func",
]

logger = logging.getLogger(__name__)

ShardFunc = Callable[[bytes, int], int]

# Replies that leave the connection in step (the server answered a full line).
_KEEP_CONNECTION = (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnknownCommandError,
    MemcacheIllegalInputError,
)


def crc32_shard_func(key: bytes, count: int) -> int:
    """The seed's example: CRC-32 of the key, modulo the number of shards."""
    return (zlib.crc32(key) & 0xFFFFFFFF) % count if count else -1


class _Connection(Client):  # type: ignore[misc]
    """A pymemcache client as one pooled connection (the pool closes it by ``disconnect``),
    with the two commands pymemcache has no method for."""

    abandoned: socket.socket | None = None

    def disconnect(self) -> None:
        self.close()

    def close(self) -> None:
        # pymemcache closes the socket when a call fails, from inside its ``except``: a call
        # that timed out keeps it instead, for the shard's `Fence`, which holds new calls
        # back until memcached has run (or dropped) what that call had sent.
        sock: socket.socket | None = getattr(self, "sock", None)
        if sock is not None and isinstance(sys.exc_info()[1], TimeoutError):
            self.abandoned, self.sock = sock, None
        super().close()

    def meta_ttl(self, key: bytes) -> bytes:
        """``mg <key> t``: the reply line, ``HD t<seconds>`` or ``EN`` (absent)."""
        return self.raw_command(b"mg " + key + b" t")  # type: ignore[no-any-return]

    def set_verbosity(self, level: int) -> bytes:
        return self.raw_command(b"verbosity %d" % int(level))  # type: ignore[no-any-return]


class _Passthrough:
    """pymemcache serde that keeps bytes as they are and hands back the flags with them."""

    def serialize(self, key: Any, value: bytes) -> tuple[bytes, int]:
        return value, 0

    def deserialize(self, key: Any, value: bytes, flags: int) -> tuple[bytes, int]:
        return value, flags


# pymemcache methods by where their keys are: the first argument, or a collection of them.
_ONE_KEY = frozenset(
    {"get", "gets", "set", "add", "replace", "append", "prepend", "cas", "delete", "incr"}
    | {"decr", "touch", "meta_ttl"}
)
_MANY_KEYS = frozenset({"get_many", "gets_many", "set_many", "delete_many"})
_NO_KEY = frozenset({"flush_all", "stats", "version", "set_verbosity"})


def _check_keys(method: str, args: tuple[Any, ...]) -> None:
    if method in _ONE_KEY:
        validate_key(args[0])
    elif method in _MANY_KEYS:
        for key in args[0]:
            validate_key(key)
    elif method not in _NO_KEY:  # raw_command among them: its line would escape the check
        raise InvalidKeyError(f"{method!r} is not a memcache call shardcache makes")


@dataclass(eq=False)  # identity: handles are dictionary keys when grouping
class ShardHandle:
    """One shard: its position, address, state, connection pool and health."""

    index: int
    address: str
    state: MemcachedState
    pool: ConnectionPool
    warm_source: ShardHandle | None = None
    unhealthy_until: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    fence: Fence = field(init=False)

    def __post_init__(self) -> None:
        self.fence = Fence(f"memcached {self.address}")

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """pymemcache's ``method`` on a pooled connection; the connection is dropped after a
        socket error (pymemcache has closed it) and kept after a protocol-level one.

        Every byte sent to a memcached goes through here, so this is where keys are checked
        (`InvalidKeyError` before any I/O): a key with a space or CRLF would smuggle a
        command of its own onto the connection, and leave its replies out of step."""
        _check_keys(method, args)
        pool = self.pool
        conn = pool.acquire()
        try:
            result = getattr(conn, method)(*args, **kwargs)
        except _KEEP_CONNECTION:
            pool.release(conn)
            raise
        except BaseException:
            abandoned = getattr(conn, "abandoned", None)
            if abandoned is not None:
                self.fence.add(abandoned)
                conn.abandoned = None  # type: ignore[attr-defined]
            pool.discard(conn)
            raise
        pool.release(conn)
        return result

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    @property
    def healthy(self) -> bool:
        """Not marked down, and no timed-out call is still unanswered (see `Fence`)."""
        return time.monotonic() >= self.unhealthy_until and (not self.fence or self.fence.settled())


@dataclass
class ShardMapping:
    """Keys (or items) of one shard for the sentinel calls; ``warming_up`` says that errors
    writing them are to be turned into success (the shard is in WARM_UP)."""

    shard: ShardHandle | None
    entries: list[Any]
    warming_up: bool


_SENTINEL_STATES = (MemcachedState.ACTIVE, MemcachedState.WRITE_ONLY, MemcachedState.WARM_UP)


@dataclass(frozen=True)
class _Snapshot:
    """The shard list at one moment, with the shard function made for it: an update swaps in
    a new one whole (one assignment), so no reader pairs a new function with an old list;
    in-flight calls keep theirs."""

    shards: tuple[ShardHandle, ...]
    shard_func: ShardFunc = crc32_shard_func

    def for_key(self, key: bytes) -> ShardHandle | None:
        index = self.shard_func(key, len(self.shards))
        return self.shards[index] if 0 <= index < len(self.shards) else None


class ShardManager(Protocol):
    """Maps keys to shards and holds their states."""

    def get_shard(self, key: bytes) -> ShardHandle | None: ...

    def get_shards_for_keys(
        self, keys: Iterable[bytes]
    ) -> dict[ShardHandle | None, list[bytes]]: ...

    def get_all_shards(self) -> Sequence[ShardHandle]: ...

    def update_shard_states(self, states: Sequence[ShardState | str]) -> None: ...


class StaticShardManager:
    """A fixed list of shards whose states can be swapped at run time.

    ``shards`` are ``host:port`` strings (ACTIVE) or `ShardState`; ``shard_func(key, n)`` is
    `crc32_shard_func` by default, or ``"ketama"`` / ``"rendezvous"`` (over the addresses).
    A shard whose connection fails is skipped for ``retry_timeout`` seconds (its keys miss;
    they are not moved), so callers do not each wait for a connect timeout.
    """

    def __init__(
        self,
        shards: Sequence[ShardState | str],
        shard_func: ShardFunc | str = crc32_shard_func,
        *,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
        max_pool_size: int = 64,
        retry_timeout: float = 2.0,
    ) -> None:
        self._options = {
            "connect_timeout": connect_timeout,
            "timeout": timeout,
            "max_pool_size": max_pool_size,
        }
        self.retry_timeout = retry_timeout
        self._shard_func_spec = shard_func
        self._lock = threading.Lock()
        self._snapshot = _Snapshot(())
        self.update_shard_states(shards)
        forget_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # a parent thread may have held it at the fork
        for shard in self._snapshot.shards:
            shard.fence.after_fork()
            if shard.warm_source is not None:
                shard.warm_source.fence.after_fork()

    # --- states -----------------------------------------------------------------------------

    def update_shard_states(self, states: Sequence[ShardState | str]) -> None:
        """Replace the whole shard list atomically: pools are kept for addresses that stay,
        opened for new ones and closed for removed ones; in-flight calls finish on the old
        list. Changing the length remaps keys, so it is logged as a warning."""
        wanted = [s if isinstance(s, ShardState) else ShardState(s) for s in states]
        if not wanted:
            raise ConfigurationError("a sharded memcache needs at least one shard")
        with self._lock:
            if isinstance(self._snapshot, _Closed):
                raise ClosedError("this memcache client is closed")
            old = self._snapshot.shards
            # Every handle in use now, warm sources outside the list included, by address.
            previous_handles = [*old, *(s.warm_source for s in old if s.warm_source is not None)]
            pools = {shard.address: shard for shard in reversed(previous_handles)}
            fresh: list[ShardHandle] = []
            for index, spec in enumerate(wanted):
                previous = pools.get(spec.address)
                pool = previous.pool if previous else self._connect(spec.address)
                handle = ShardHandle(index, spec.address, spec.state, pool)
                if previous is not None:
                    handle.counters = previous.counters
                    handle.unhealthy_until = previous.unhealthy_until
                    handle.fence = previous.fence
                fresh.append(handle)
            by_address = {handle.address: handle for handle in fresh}
            for handle, spec in zip(fresh, wanted, strict=True):
                if spec.warm_source is not None:
                    source = by_address.get(spec.warm_source)
                    if source is None:  # a server outside the list, e.g. the one replaced
                        known = pools.get(spec.warm_source)
                        pool = known.pool if known else self._connect(spec.warm_source)
                        source = ShardHandle(-1, spec.warm_source, MemcachedState.ACTIVE, pool)
                        if known is not None:
                            source.fence = known.fence
                    handle.warm_source = source
            if old and len(old) != len(fresh):
                logger.warning(
                    "shardcache: memcache shard count changes from %d to %d: keys remap",
                    len(old),
                    len(fresh),
                )
            func = self._make_shard_func([h.address for h in fresh])
            self._snapshot = _Snapshot(tuple(fresh), func)
        kept = {h.address for h in fresh} | {
            h.warm_source.address for h in fresh if h.warm_source is not None
        }
        for shard in pools.values():
            if shard.address not in kept:
                shard.pool.retire()  # calls in flight on the old list still finish

    def _make_shard_func(self, addresses: list[str]) -> ShardFunc:
        spec = self._shard_func_spec
        if callable(spec):
            return spec
        if spec in ("ketama", "rendezvous"):
            selector = Ketama(addresses) if spec == "ketama" else Rendezvous(addresses)
            return lambda key, count: selector(key)
        raise ConfigurationError(
            f"unknown shard_func {spec!r}: a function, 'ketama' or 'rendezvous'"
        )

    def _connect(self, address: str) -> ConnectionPool:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"bad memcached address {address!r}: expected host:port")
        server = (host, int(port))
        connect_timeout, timeout = self._options["connect_timeout"], self._options["timeout"]
        return ConnectionPool(
            lambda: _Connection(
                server,
                serde=_Passthrough(),
                connect_timeout=connect_timeout,
                timeout=timeout,
                no_delay=True,
                default_noreply=False,
            ),
            max_connections=int(self._options["max_pool_size"]),
            timeout=connect_timeout,
            name=address,
        )

    def time_limit(self, calls: int) -> float:
        """The longest ``calls`` server calls on one shard may take by their timeouts (a
        read-through makes up to three per key): how long a caller waits for a worker."""
        per_call = self._options["connect_timeout"] + self._options["timeout"]
        return self._options["connect_timeout"] + (3 * max(1, calls) + 1) * per_call

    def mark_unhealthy(self, shard: ShardHandle) -> None:
        now = time.monotonic()
        if shard.unhealthy_until <= now:  # newly marked: one line, not one per failure
            logger.warning(
                "shardcache: memcached %s marked unhealthy for %gs after a connection failure",
                shard.address,
                self.retry_timeout,
            )
        shard.unhealthy_until = now + self.retry_timeout
        shard.count("errors")

    # --- lookups ----------------------------------------------------------------------------

    def get_shard(self, key: bytes) -> ShardHandle | None:
        """The shard of ``key`` (None when the shard function maps it nowhere)."""
        return self._snapshot.for_key(key)

    def get_shards_for_keys(self, keys: Iterable[bytes]) -> dict[ShardHandle | None, list[bytes]]:
        for_key = self._snapshot.for_key  # one snapshot for the whole batch
        groups: dict[ShardHandle | None, list[bytes]] = {}
        for key in keys:
            groups.setdefault(for_key(key), []).append(key)
        return groups

    def get_shards_for_items(self, items: Iterable[Item]) -> dict[ShardHandle | None, list[Item]]:
        for_key = self._snapshot.for_key
        groups: dict[ShardHandle | None, list[Item]] = {}
        for item in items:
            key = item.key.encode() if isinstance(item.key, str) else item.key
            groups.setdefault(for_key(key), []).append(item)
        return groups

    def get_shards_for_sentinels_from_keys(self, keys: Iterable[bytes]) -> list[ShardMapping]:
        """The keys of every shard the sentinel calls contact (all but DOWN); an unmapped key
        comes under ``shard=None``."""
        return self._sentinel_mappings(self.get_shards_for_keys(keys))

    def get_shards_for_sentinels_from_items(self, items: Iterable[Item]) -> list[ShardMapping]:
        return self._sentinel_mappings(self.get_shards_for_items(items))

    @staticmethod
    def _sentinel_mappings(groups: dict[ShardHandle | None, list[Any]]) -> list[ShardMapping]:
        return [
            ShardMapping(
                shard, entries, shard is not None and shard.state is MemcachedState.WARM_UP
            )
            for shard, entries in groups.items()
            if shard is None or shard.state in _SENTINEL_STATES
        ]

    def get_all_shards(self) -> tuple[ShardHandle, ...]:
        snapshot = self._snapshot
        if isinstance(snapshot, _Closed):
            raise ClosedError("this memcache client is closed")
        return snapshot.shards

    def states(self) -> list[ShardState]:
        return [
            ShardState(h.address, h.state, h.warm_source.address if h.warm_source else None)
            for h in self._snapshot.shards
        ]

    def close(self) -> None:
        """Close every pool; later lookups raise `ClosedError` (a shard that would be
        skipped must not answer as if the client were open either)."""
        with self._lock:
            shards = self._snapshot.shards
            self._snapshot = _Closed()
        for shard in shards:
            shard.pool.close()
            shard.fence.clear()
            if shard.warm_source is not None and shard.warm_source.index == -1:
                shard.warm_source.pool.close()
                shard.warm_source.fence.clear()


class _Closed(_Snapshot):
    """The shard list of a closed manager: every lookup raises `ClosedError`."""

    def __init__(self) -> None:
        super().__init__(())

    def for_key(self, key: bytes) -> ShardHandle | None:
        raise ClosedError("this memcache client is closed")
