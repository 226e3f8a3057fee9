"""A key-hashed pool of independent Redis servers (after the Go ``pool`` package)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry

from shardcache.config import RedisAddress
from shardcache.connections import RedisShard
from shardcache.dialects import REDIS
from shardcache.errors import ConfigurationError
from shardcache.hashing import HashFunction, Selector, make_selector
from shardcache.protocols import REDIS_CAPABILITIES, Dialect, Shard
from shardcache.stats import ShardReport, redis_report

__all__ = ["HashPool"]

T = TypeVar("T")

# The selector's answer for a key is memoised: hashing is pure, and the pure-Python FNV of a
# key costs about a microsecond, as much as the rest of the cache layer's work on it. The
# memo is bounded and simply starts over when full.
_MEMO_LIMIT = 100_000


class HashPool:
    """Independent Redis servers; each key lives on the one its hash picks.

    ``addresses`` are ``host:port`` or ``redis://`` / ``rediss://`` / ``unix://`` URLs
    (credentials and db numbers honoured); their order fixes the mapping for the modulo
    hashes, while ``"ketama"`` and ``"rendezvous"`` depend only on the addresses themselves,
    so adding a server moves about 1/N of the keys. ``hash`` is ``"fnv1a_32"`` (default),
    ``"fnv1_32"``, ``"murmur3_32"``, ``"crc32"``, ``"ketama"``, ``"rendezvous"`` or a function
    ``f(bytes) -> int``.

    A socket has one timeout: ``read_timeout`` bounds reads and writes alike, unless a
    longer ``write_timeout`` is given. A server whose call failed at the socket level is
    skipped for ``retry_timeout`` seconds (calls to it fail at once, `shardcache.breaker`).
    """

    capabilities = REDIS_CAPABILITIES
    dialect: Dialect = REDIS

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 3.0,
        write_timeout: float | None = None,
        retry_timeout: float = 1.0,
        max_connections_per_instance: int = 64,
        hash: str | HashFunction | Selector = "fnv1a_32",
        pool_timeout: float | None = None,
        username: str | None = None,
        password: str | None = None,
        **connection_options: Any,
    ) -> None:
        if isinstance(addresses, str) or not addresses:
            raise ConfigurationError("HashPool needs a list of one or more Redis addresses")
        parsed = [RedisAddress.parse(address) for address in addresses]
        ids = [address.id for address in parsed]
        if len(set(ids)) != len(ids):
            raise ConfigurationError(f"HashPool has the same server twice: {ids}")
        options: dict[str, Any] = {
            "socket_connect_timeout": connect_timeout,
            # One socket timeout bounds reads and writes alike: the read timeout, unless a
            # longer write timeout is given (a paused server stalls a call that long).
            "socket_timeout": read_timeout
            if write_timeout is None
            else max(read_timeout, write_timeout),
            "retry": Retry(NoBackoff(), 0),  # failures are ours to handle, at once
            **connection_options,
        }
        self._shards = []
        for address in parsed:
            kwargs = address.connection_kwargs(**options)
            if username is not None and kwargs.get("username") is None:
                kwargs["username"] = username
            if password is not None and "password" not in kwargs:
                kwargs["password"] = password
            self._shards.append(
                RedisShard(
                    address.id,
                    kwargs,
                    max_connections=max_connections_per_instance,
                    pool_timeout=connect_timeout if pool_timeout is None else pool_timeout,
                    retry_timeout=retry_timeout,
                )
            )
        self._select = make_selector(hash, ids)
        self._memo: dict[bytes, int] = {}

    def __repr__(self) -> str:
        return f"<HashPool {[shard.id for shard in self._shards]}>"

    # --- the Go pool API ---------------------------------------------------------------------

    def index(self, key: str | bytes) -> int:
        """The index of the server that holds ``key``."""
        data = key.encode() if isinstance(key, str) else key
        try:
            return self._memo[data]
        except KeyError:
            pass
        index = self._select(data)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[data] = index
        return index

    def size(self) -> int:
        """How many servers."""
        return len(self._shards)

    def id(self, index: int) -> str:
        """The server at ``index`` as ``host:port/db``."""
        return self._shards[index].id

    def with_index(self, index: int, fn: Callable[[AbstractConnection], T]) -> T:
        """Call ``fn(connection)`` with a pooled redis-py connection to server ``index``.

        The connection goes back to the pool when ``fn`` returns, and is closed when it raises.
        """
        pool = self._shards[index].pool
        conn = pool.acquire()
        try:
            result = fn(conn)
        except BaseException:
            pool.discard(conn)
            raise
        pool.release(conn)
        return result

    def with_key(self, key: str | bytes, fn: Callable[[AbstractConnection], T]) -> T:
        """`with_index` on the server that holds ``key``."""
        return self.with_index(self.index(key), fn)

    def pipeline(self, index: int, transaction: bool = False) -> redis.client.Pipeline:
        """A redis-py pipeline on server ``index``."""
        return self._shards[index].client().pipeline(transaction=transaction)

    # --- the shard protocol ------------------------------------------------------------------

    def shard_for(self, key: bytes, *, read: bool = False) -> RedisShard:
        return self._shards[self.index(key)]

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        # Independent servers take multi-key commands on any keys: one run per shard.
        keys = keys if isinstance(keys, list) else list(keys)
        memo = self._memo
        known = list(map(memo.get, keys))
        indexes: list[int] = (
            [self.index(key) if i is None else i for key, i in zip(keys, known, strict=True)]
            if None in known
            else known  # type: ignore[assignment]
        )
        if len(self._shards) == 1:
            return {self._shards[0]: [keys]}
        runs: list[list[bytes]] = [[] for _ in self._shards]
        for key, index in zip(keys, indexes, strict=True):
            runs[index].append(key)
        return {shard: [run] for shard, run in zip(self._shards, runs, strict=True) if run}

    def shards(self) -> list[RedisShard]:
        return list(self._shards)

    def reports(self) -> list[ShardReport]:
        """A `ShardReport` of every server."""
        return [redis_report(shard) for shard in self._shards]

    @property
    def closed(self) -> bool:
        return self._shards[0].closed

    def close(self) -> None:
        """Close every connection of every server, sync and asyncio; later calls raise
        `ClosedError`."""
        for shard in self._shards:
            shard.close()
