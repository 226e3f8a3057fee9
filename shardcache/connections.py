"""One Redis server as a shard: a lean pool of redis-py connections, commands and batches.

Why our own pool: redis-py's ``Redis.get`` spends about half its time outside the socket, in
its pool checkout, retry and response-callback layers. The hot path here drives redis-py
``Connection`` objects directly (``pack_command`` / ``send_packed_command`` /
``read_response``): redis-py still owns the protocol, the hiredis parser, AUTH and TLS; we own
only checkout, return and the failure policy. Everything else (locks, scripts, admin) goes
through a full ``redis.Redis`` client built from the same settings (`RedisShard.client`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis
from redis.connection import AbstractConnection
from redis.exceptions import ResponseError

from shardcache import wire
from shardcache.breaker import Breaker
from shardcache.errors import ClosedError, CommandError, ShardError, ShardUnavailableError
from shardcache.lifecycle import forget_after_fork
from shardcache.near import Tracker, caching_allowed, confirm_redirect, redirect_command
from shardcache.protocols import LoopPools
from shardcache.wire import (
    IO_ERRORS,
    after_failure,
    detach_timed_out,
    is_open,
    pack,
    pack_many,
    read_many,
    read_one,
    send,
    server_down,
)

__all__ = [
    "IO_ERRORS",
    "READ_COMMANDS",
    "Batch",
    "ConnectionPool",
    "RecoveringBatch",
    "RedisShard",
    "after_failure",
]

logger = logging.getLogger(__name__)
_warned_old_hiredis: list[bool] = []  # the old-hiredis line is logged once per process

# Commands the cache layer sends that change nothing: safe to send twice.
READ_COMMANDS = frozenset({b"GET", b"MGET", b"EXISTS", b"PTTL", b"TTL"})


def send_readonly(conn: AbstractConnection) -> None:
    """Say READONLY right after the handshake (connections to a cluster replica)."""
    conn.on_connect()
    conn.send_command("READONLY")
    conn.read_response()


class ConnectionPool:
    """A bounded LIFO pool of redis-py connections, safe across threads and ``fork()``.

    Checkout and return are a lock-free ``deque`` pop/append (atomic under the GIL); only when
    the pool is empty does a caller take the lock, to create a connection or wait for one
    for at most ``timeout`` seconds.
    """

    def __init__(
        self,
        factory: Callable[[], AbstractConnection],
        *,
        max_connections: int,
        timeout: float,
        name: str = "",
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._factory = factory
        self._max = max_connections
        self._timeout = timeout
        self._name = name
        self._idle: deque[AbstractConnection] = deque()
        self._created = 0
        self._waiters = 0
        self._cond = threading.Condition(threading.Lock())
        self._pid = os.getpid()
        self.closed = False  # retired or shut: connections coming back are closed
        self._shut = False  # closed for good: no connection is lent any more

    def acquire(self) -> AbstractConnection:
        if self._pid != os.getpid():
            self._after_fork()
        if self._shut:
            raise ClosedError(f"shard {self._name} is closed (its topology was closed)")
        try:
            return self._idle.pop()
        except IndexError:
            return self._acquire_slow()

    def _acquire_slow(self) -> AbstractConnection:
        with self._cond:
            self._waiters += 1
            try:
                ok = self._cond.wait_for(self._can_proceed, timeout=self._timeout)
            finally:
                self._waiters -= 1
            if not ok:
                raise ShardUnavailableError(
                    f"connection pool exhausted ({self._max} in use for {self._timeout:g}s)",
                    shard=self._name,
                )
            try:
                return self._idle.pop()
            except IndexError:
                self._created += 1
        try:
            return self._factory()
        except BaseException:
            self._forget_one()
            raise

    def _can_proceed(self) -> bool:
        return bool(self._idle) or self._created < self._max

    def release(self, conn: AbstractConnection) -> None:
        if self._pid != os.getpid():
            return  # a connection of the parent process: never reuse its socket here
        if self.closed:  # e.g. the master it leads to was failed over meanwhile
            conn.disconnect()
            self._forget_one()
            return
        self._idle.append(conn)
        if self._waiters:
            with self._cond:
                self._cond.notify()

    def discard(self, conn: AbstractConnection) -> None:
        """Close a connection that failed, and forget every idle one: after a socket error
        (server restarted, failed over) they are most likely broken too."""
        conn.disconnect()
        self._forget_one()
        self.reset()

    def _forget_one(self) -> None:
        with self._cond:
            self._created -= 1
            self._cond.notify()

    def retire(self) -> None:
        """Close idle connections now and every connection in use when it comes back, but
        still lend new ones (to callers that picked this pool just before it was replaced,
        e.g. by a failover: their error leads them to the new one)."""
        self.closed = True
        self.reset()

    def close(self) -> None:
        """`retire`, and refuse every later `acquire` with `ClosedError`."""
        self._shut = True
        self.retire()

    def reset(self) -> None:
        """Close every idle connection (those in use are closed when they come back broken)."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return
            conn.disconnect()
            self._forget_one()

    def _after_fork(self) -> None:
        # The child inherits the parent's sockets: drop them unused (redis-py's disconnect
        # does not shut down a socket owned by another pid) and start an empty pool. The
        # lock is new: a parent thread may have held the old one at the fork.
        self._cond = threading.Condition(threading.Lock())
        self._idle = deque()
        self._created = 0
        self._waiters = 0
        self._pid = os.getpid()

    @property
    def in_use(self) -> int:
        return self._created - len(self._idle)


class Batch:
    """Commands sent to one shard in one write, whose replies are read by `finish`.

    Sending every shard's batch before reading any reply lets all shards work at once from a
    single thread (scatter, then gather).
    """

    __slots__ = ("_conn", "_count", "_redirect", "shard")

    def __init__(
        self,
        shard: RedisShard,
        conn: AbstractConnection,
        count: int,
        redirect: tuple[Any, ...] | None = None,
    ) -> None:
        self.shard = shard
        self._conn = conn
        self._count = count
        self._redirect = redirect  # sent first: its reply is read, not returned

    def finish(self) -> list[Any]:
        """The replies in order; an error reply is a `CommandError` in its place."""
        conn, shard, redirect = self._conn, self.shard, self._redirect
        try:
            replies = read_many(conn, self._count + (redirect is not None))
            if redirect is not None and shard.tracker is not None:
                confirm_redirect(conn, shard.tracker, redirect, replies.pop(0))
        except IO_ERRORS as exc:
            abandoned = detach_timed_out(conn, True, exc)
            shard.pool.discard(conn)
            if server_down(True, exc):  # a timeout: the server is paused or gone
                shard.breaker.failed(abandoned)
            raise ShardUnavailableError(str(exc), shard=shard.id) from exc
        except BaseException:
            shard.pool.discard(conn)
            raise
        shard.pool.release(conn)
        if shard.breaker.down_until:
            shard.breaker.succeeded()
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = CommandError(str(reply), shard=self.shard.id, reply=reply)
        return replies


class RecoveringBatch:
    """A batch on a shard whose topology can repair failures: a whole-batch failure goes to
    `recover` (by default: raise it), the replies of a successful one through `repair` (by
    default: as they are). Cluster and sentinel batches override one or both. Given an
    ``outcome`` (replies, or the failure, of a batch sent some other way, e.g. on asyncio)
    it sends nothing and only `settle` is of use."""

    def __init__(
        self,
        shard: RedisShard,
        commands: Sequence[Sequence[Any]],
        *,
        outcome: list[Any] | ShardUnavailableError | None = None,
    ) -> None:
        self.commands = commands
        self._pending: Batch | None = None
        self._outcome = outcome
        if outcome is None:
            try:
                self._pending = shard.begin(commands)
            except ShardUnavailableError as exc:
                self._outcome = exc

    def finish(self) -> list[Any]:
        outcome = self._outcome
        if self._pending is not None:
            try:
                outcome = self._pending.finish()
            except ShardUnavailableError as exc:
                outcome = exc
        assert outcome is not None
        return self.settle(outcome)

    def settle(self, outcome: list[Any] | ShardUnavailableError) -> list[Any]:
        if isinstance(outcome, ShardUnavailableError):
            return self.recover(outcome)
        return self.repair(outcome)

    @property
    def only_reads(self) -> bool:
        return all(command[0] in READ_COMMANDS for command in self.commands)

    def recover(self, failure: ShardUnavailableError) -> list[Any]:
        raise failure

    def repair(self, replies: list[Any]) -> list[Any]:
        return replies


class RedisShard:
    """One Redis server (or the current master of a named group) holding part of the keys."""

    def __init__(
        self,
        shard_id: str,
        connection_kwargs: dict[str, Any],
        *,
        max_connections: int = 64,
        pool_timeout: float = 5.0,
        factory: Callable[[], AbstractConnection] | None = None,
        readonly: bool = False,
        retry_timeout: float = 1.0,
    ) -> None:
        self.id = shard_id
        # Fail fast for ``retry_timeout`` seconds after the server proved unreachable.
        self.breaker = Breaker(shard_id, retry_timeout)
        kwargs = dict(connection_kwargs)
        if readonly:
            kwargs["redis_connect_func"] = send_readonly
        self.readonly = readonly
        connection_class = kwargs.pop("connection_class", redis.Connection)
        self._connection_class = connection_class
        self._kwargs = kwargs
        self.pool = ConnectionPool(
            factory or (lambda: connection_class(**kwargs)),
            max_connections=max_connections,
            timeout=pool_timeout,
            name=shard_id,
        )
        self._custom_factory = factory is not None
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        # This server's asyncio pools, one per event loop: set by `shardcache.aio` on the
        # first asyncio call, under ``pools_lock``.
        self.async_pools: LoopPools | None = None
        self.pools_lock = threading.Lock()
        # The near cache's invalidation listener for this server (`shardcache.near`), made
        # by the first near-cache read from it; while it exists, every read is tracked.
        self.tracker: Tracker | None = None
        forget_after_fork(self)

    def __repr__(self) -> str:
        return f"<RedisShard {self.id}>"

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        """Run one command and return its reply.

        A reply error raises `CommandError`; a socket error raises `ShardUnavailableError`,
        except that an ``idempotent`` command whose pooled connection turned out to be closed
        (server restarted, idle timeout) is retried once on a fresh connection. A timeout is
        never retried, so a call never waits longer than the socket timeout. While the
        server is marked down (`Breaker`) the call fails at once.
        """
        breaker = self.breaker
        if breaker.down_until:
            breaker.check()
        pool = self.pool
        conn = pool.acquire()
        reused = connected = is_open(conn)
        try:
            if not connected:
                conn.connect()
                connected = True
            tracker = self.tracker  # a near cache reads from this server: track every read
            redirect = None if tracker is None else redirect_command(conn, tracker)
            if redirect is None:
                send(conn, pack(conn, args))
            else:
                send(conn, pack_many(conn, (redirect, args)))
                confirm_redirect(conn, tracker, redirect, read_many(conn, 1)[0])  # type: ignore[arg-type]
            reply = read_one(conn)
        except ResponseError as exc:
            pool.release(conn)
            if breaker.down_until:
                breaker.succeeded()
            raise CommandError(str(exc), shard=self.id, key=key, reply=exc) from exc
        except IO_ERRORS as exc:
            abandoned = detach_timed_out(conn, connected, exc)
            pool.discard(conn)
            sent, again = after_failure(connected, reused, idempotent, exc)
            if again:
                return self.execute(*args, key=key, idempotent=False)
            if server_down(connected, exc):
                breaker.failed(abandoned)
            raise ShardUnavailableError(str(exc), shard=self.id, key=key, sent=sent) from exc
        except BaseException:
            pool.discard(conn)
            raise
        pool.release(conn)
        if breaker.down_until:
            breaker.succeeded()
        return reply

    def begin(self, commands: Sequence[Sequence[Any]]) -> Batch:
        """Send ``commands`` in one write; read their replies with `Batch.finish`."""
        if self.breaker.down_until:
            self.breaker.check()
        conn = self.pool.acquire()
        reused = connected = is_open(conn)
        tracker, redirect = self.tracker, None
        try:
            if not connected:
                conn.connect()
                connected = True
            if tracker is not None:
                redirect = redirect_command(conn, tracker)
                if redirect is not None:
                    commands = (redirect, *commands)
            if redirect is None:
                commands = caching_allowed(conn, commands)
            send(conn, pack_many(conn, commands))
        except IO_ERRORS as exc:
            abandoned = detach_timed_out(conn, connected, exc)
            self.pool.discard(conn)
            sent, _ = after_failure(connected, reused, False, exc)
            if server_down(connected, exc):
                self.breaker.failed(abandoned)
            raise ShardUnavailableError(str(exc), shard=self.id, sent=sent) from exc
        except BaseException:
            self.pool.discard(conn)
            raise
        if redirect is not None:
            return Batch(self, conn, len(commands) - 1, redirect)
        return Batch(self, conn, len(commands))

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run ``commands`` in one round trip; error replies come back as `CommandError`."""
        return self.begin(commands).finish()

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        """Every key matching the glob ``match`` (SCAN, never KEYS)."""
        cursor = b"0"
        while True:
            cursor, keys = self.execute(b"SCAN", cursor, b"MATCH", match, b"COUNT", count)
            yield from keys
            if cursor in (b"0", 0):
                return

    # --- the near cache -------------------------------------------------------------------

    def track(self) -> Tracker | None:
        """This server's `Tracker`, started on the first call (None once closed, or when
        the server refused tracking: it is not asked again)."""
        tracker = self.tracker
        if tracker is not None and not tracker.stopped:
            return tracker
        with self._lock:
            if self.pool.closed or self._custom_factory:
                return None
            if self.tracker is not None and self.tracker.refusal is not None:
                return None
            if not wire.tells_pushes_apart():
                if not _warned_old_hiredis:
                    _warned_old_hiredis.append(True)
                    logger.error(
                        "shardcache: hiredis older than 3.2 cannot tell a RESP3 push from a "
                        "reply; the near cache keeps nothing (upgrade hiredis)"
                    )
                return None
            if self.tracker is None or self.tracker.stopped:
                self.tracker = Tracker(self)
            return self.tracker

    def listener_settings(self) -> tuple[type, dict[str, Any]]:
        """The connection class and settings of a listener: the data connections' own,
        in RESP2 (invalidations arrive as messages of a subscribed channel)."""
        kwargs = {k: v for k, v in self._kwargs.items() if k != "redis_connect_func"}
        kwargs["protocol"] = 2
        kwargs["decode_responses"] = False  # the keys as stored, bytes
        return self._connection_class, kwargs

    def _stop_tracking(self) -> None:
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            tracker.close()

    # --- asyncio (`shardcache.aio` owns the pools; this module never imports it) -------------

    def leaf(self) -> RedisShard:
        """The server commands for this shard go to now: itself."""
        return self

    def async_settings(self) -> tuple[type, dict[str, Any], bool] | None:
        """``(connection class, its keyword arguments, readonly)`` for asyncio twins of this
        server's connections; None when they come from a user's factory (no asyncio twin)
        or the shard was retired."""
        if self.closed:
            raise ClosedError(f"shard {self.id} is closed")
        if self._custom_factory or self.pool.closed:
            return None
        return self._connection_class, self._kwargs, self.readonly

    @property
    def async_loops(self) -> int:
        """How many event loops have a pool of this server's asyncio connections now."""
        pools = self.async_pools
        return 0 if pools is None else pools.loops

    def recoverable(self, error: ShardError) -> bool:
        """Whether `recover` could do more with ``error`` than raise it: a lone server cannot."""
        return False

    def recover(
        self,
        args: Sequence[Any],
        key: bytes | None,
        idempotent: bool,
        error: ShardError,
        leaf: RedisShard,
    ) -> Any:
        raise error

    def settle(
        self,
        commands: Sequence[Sequence[Any]],
        leaf: RedisShard,
        outcome: list[Any] | ShardUnavailableError,
    ) -> list[Any]:
        if isinstance(outcome, ShardUnavailableError):
            raise outcome
        return outcome

    def client(self) -> redis.Redis:
        """A full redis-py client on this server (same settings), for locks and admin."""
        with self._lock:
            if self._client is None:
                pool = redis.ConnectionPool(
                    connection_class=self._connection_class,
                    max_connections=self.max_connections,
                    **self._kwargs,
                )
                self._client = redis.Redis(connection_pool=pool)
            return self._client

    @property
    def closed(self) -> bool:
        return self.pool._shut

    def retire(self) -> None:
        """This server no longer holds the shard (e.g. its master was failed over): close
        idle connections now, lent ones when they come back (see `ConnectionPool.retire`)."""
        self.pool.retire()
        if self.async_pools is not None:
            self.async_pools.retire()
        self._close_client()
        self._stop_tracking()

    def close(self) -> None:
        """Close every connection, sync and asyncio; later calls raise `ClosedError`."""
        self.pool.close()
        if self.async_pools is not None:
            self.async_pools.shut()
        self._close_client()
        self._stop_tracking()
        self.breaker.fence.clear()

    def _close_client(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client.connection_pool.disconnect()
                self._client = None

    def _after_fork(self) -> None:
        # The parent's event loops and their connections are not the child's to use.
        self.breaker.fence.after_fork()
        self.tracker = None  # its thread is the parent's: the child starts its own
        self._lock = threading.Lock()
        self.pools_lock = threading.Lock()
        self.async_pools = None
