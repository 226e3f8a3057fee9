"""The asyncio wire layer: the same shards, spoken to through redis-py's asyncio connections.

Every Redis shard answers `leaf` (the `RedisShard` its commands go to now; the hooks are
declared as `shardcache.protocols.RecoveringShard`); that server's `AsyncConnectionPool` for
the running event loop (kept here, in its `LoopPools`) sends and reads them natively. This
module and `shardcache.connections` share only `shardcache.wire`; neither imports the other. What
is ours, as in the sync pool: a lean checkout (redis-py's asyncio pool checks every
connection's health on each checkout), the failure policy, and draining a batch's replies
from the hiredis reader in one loop. The rare repairs (a MOVED or ASK, a failed-over master,
a slot map to re-read) block on locks, sleeps and other nodes: they run once, in the sync
topology's own code, in a worker thread, so there is one implementation of each.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio
import redis.asyncio.connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from shardcache.breaker import Breaker
from shardcache.errors import ClosedError, CommandError, ShardUnavailableError
from shardcache.lifecycle import end_watch, until_loop_ends
from shardcache.near import caching_allowed, confirm_redirect, redirect_command
from shardcache.protocols import RecoveringShard, Shard

if TYPE_CHECKING:
    from shardcache.connections import RedisShard

from shardcache.wire import (
    ASYNC_IO_ERRORS,
    after_failure,
    deadline,
    detach_timed_out_async,
    drop_async,
    pack,
    pack_many,
    read_many_async,
    server_down,
)

__all__ = ["AsyncConnectionPool", "LoopPools", "execute", "fan_out", "pipeline", "pool_for"]

# On a connection whose batch began with the near cache's CLIENT TRACKING: that command,
# whose reply `finish` reads first.
_SENT_REDIRECT = "_shardcache_sent_redirect"

_CLASSES: dict[type, Any] = {
    redis.Connection: redis.asyncio.Connection,
    redis.SSLConnection: redis.asyncio.SSLConnection,
    redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
}


@cache
def _accepted(cls: Any) -> frozenset[str]:
    """The keyword arguments ``cls`` and its bases take."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind is parameter.VAR_KEYWORD:
                continue
            names.add(parameter.name)
    return frozenset(names)


async def _send_readonly(conn: redis.asyncio.connection.AbstractConnection) -> None:
    # A replica's connection says READONLY once, right after the handshake.
    await conn.on_connect()
    await conn.send_command("READONLY")
    await conn.read_response()


def async_factory(
    sync_class: type, kwargs: Mapping[str, Any], *, readonly: bool = False
) -> Callable[[], redis.asyncio.connection.AbstractConnection] | None:
    """A maker of asyncio connections with the settings of a sync connection class (None
    when that class has no asyncio twin, e.g. a user's own)."""
    cls = _CLASSES.get(sync_class)
    if cls is None:
        return None
    accepted = _accepted(cls)
    options = {k: v for k, v in kwargs.items() if k in accepted}
    options["retry"] = Retry(NoBackoff(), 0)  # our policy decides what is retried
    if readonly:
        options["redis_connect_func"] = _send_readonly
    else:
        options.pop("redis_connect_func", None)
    return lambda: cls(**options)


class AsyncConnectionPool:
    """A bounded LIFO pool of redis-py asyncio connections to one server, for one event loop."""

    def __init__(
        self,
        factory: Callable[[], redis.asyncio.connection.AbstractConnection],
        *,
        max_connections: int,
        timeout: float,
        read_timeout: float | None,
        name: str,
        breaker: Breaker | None = None,
        leaf: RedisShard | None = None,
    ) -> None:
        self._factory = factory
        self._leaf = leaf  # its `tracker`: the near cache's listener, when there is one
        self.breaker = breaker or Breaker(name, 0.0)  # shared with the server's sync pool
        self._timeout = timeout
        self._read_timeout = read_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[redis.asyncio.connection.AbstractConnection] = deque()
        self.name = name
        self.closed = False  # connections coming back are closed
        self._shut = False  # the topology was closed: nothing is lent any more

    async def acquire(self) -> redis.asyncio.connection.AbstractConnection:
        if self._shut:
            raise ClosedError(f"shard {self.name} is closed (its topology was closed)")
        slots = self._slots
        if slots.locked():
            try:
                async with deadline(self._timeout):
                    await slots.acquire()
            except TimeoutError:
                raise ShardUnavailableError(
                    f"connection pool exhausted (in use for {self._timeout:g}s)",
                    shard=self.name,
                    sent=False,
                ) from None
        else:
            await slots.acquire()  # returns at once: no suspension
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            return self._factory()
        except BaseException:
            slots.release()
            raise

    def release(self, conn: redis.asyncio.connection.AbstractConnection) -> None:
        if self.closed:
            self._drop(conn)
        else:
            self._idle.append(conn)
        self._slots.release()

    def discard(self, conn: redis.asyncio.connection.AbstractConnection) -> None:
        """Close a connection that failed, and every idle one (most likely broken too)."""
        self._drop(conn)
        self._slots.release()
        self.reset()

    def reset(self) -> None:
        while self._idle:
            self._drop(self._idle.pop())

    def close(self) -> None:
        """Close idle connections now and lent ones when they come back (from the pool's
        own loop: an asyncio transport belongs to its loop's thread)."""
        self.closed = True
        self.reset()

    def shut(self) -> None:
        """Refuse every later `acquire` with `ClosedError` (from any thread); the loop's
        watch closes the connections themselves."""
        self._shut = True
        self.closed = True

    _drop = staticmethod(drop_async)

    # --- commands ------------------------------------------------------------------------

    async def execute(self, args: Sequence[Any], key: bytes | None, idempotent: bool) -> Any:
        """One command, with the sync `RedisShard.execute`'s policy: an error reply raises
        `CommandError`; a socket error `ShardUnavailableError`, after one retry on a fresh
        connection for an ``idempotent`` command whose pooled connection had gone stale."""
        breaker = self.breaker
        if breaker.down_until:
            breaker.check()
        conn = await self.acquire()
        reused = connected = conn.is_connected
        try:
            if not connected:
                await conn.connect()
                connected = True
            tracker = None if self._leaf is None else self._leaf.tracker
            redirect = None if tracker is None else redirect_command(conn, tracker)
            if redirect is None:
                await conn.send_packed_command(pack(conn, args), check_health=False)
            else:
                packed = pack_many(conn, (redirect, args))
                await conn.send_packed_command(packed, check_health=False)
                tracked = await read_many_async(conn, 1, self._read_timeout)
                confirm_redirect(conn, tracker, redirect, tracked[0])  # type: ignore[arg-type]
            reply = await conn.read_response(disconnect_on_error=False)
        except ResponseError as exc:
            self.release(conn)
            if breaker.down_until:
                breaker.succeeded()
            raise CommandError(str(exc), shard=self.name, key=key, reply=exc) from exc
        except ASYNC_IO_ERRORS as exc:
            abandoned = detach_timed_out_async(conn, connected, exc)
            self.discard(conn)
            sent, again = after_failure(connected, reused, idempotent, exc)
            if again:
                return await self.execute(args, key, False)
            if server_down(connected, exc):
                breaker.failed(abandoned)
            raise ShardUnavailableError(
                str(exc) or type(exc).__name__, shard=self.name, key=key, sent=sent
            ) from exc
        except BaseException:
            self.discard(conn)  # cancelled mid-reply: the connection is out of step
            raise
        self.release(conn)
        if breaker.down_until:
            breaker.succeeded()
        return reply

    async def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Every command in one write, then every reply; error replies are `CommandError`
        values in their places. A socket error raises `ShardUnavailableError`."""
        return await self.finish(await self.begin(commands), len(commands))

    async def begin(
        self, commands: Sequence[Sequence[Any]]
    ) -> redis.asyncio.connection.AbstractConnection:
        """Send ``commands`` in one write; `finish` reads their replies. Beginning on every
        shard before finishing any lets the shards work at once, without a task each."""
        if self.breaker.down_until:
            self.breaker.check()
        conn = await self.acquire()
        reused = connected = conn.is_connected
        try:
            if not connected:
                await conn.connect()
                connected = True
            tracker = None if self._leaf is None else self._leaf.tracker
            redirect = None if tracker is None else redirect_command(conn, tracker)
            if redirect is not None:
                commands = (redirect, *commands)
            else:
                commands = caching_allowed(conn, commands)
            await conn.send_packed_command(pack_many(conn, commands), check_health=False)
            setattr(conn, _SENT_REDIRECT, redirect)
        except ASYNC_IO_ERRORS as exc:
            abandoned = detach_timed_out_async(conn, connected, exc)
            self.discard(conn)
            sent, _ = after_failure(connected, reused, False, exc)
            if server_down(connected, exc):
                self.breaker.failed(abandoned)
            raise ShardUnavailableError(
                str(exc) or type(exc).__name__, shard=self.name, sent=sent
            ) from exc
        except BaseException:
            self.discard(conn)
            raise
        return conn

    async def finish(
        self, conn: redis.asyncio.connection.AbstractConnection, count: int
    ) -> list[Any]:
        redirect = getattr(conn, _SENT_REDIRECT, None)
        try:
            replies = await read_many_async(
                conn, count + (redirect is not None), self._read_timeout
            )
            if redirect is not None:
                setattr(conn, _SENT_REDIRECT, None)
                tracker = None if self._leaf is None else self._leaf.tracker
                if tracker is not None:
                    confirm_redirect(conn, tracker, redirect, replies[0])
                del replies[0]
        except ASYNC_IO_ERRORS as exc:
            abandoned = detach_timed_out_async(conn, True, exc)
            self.discard(conn)
            if server_down(True, exc):  # a timeout: the server is paused or gone
                self.breaker.failed(abandoned)
            raise ShardUnavailableError(str(exc) or type(exc).__name__, shard=self.name) from exc
        except BaseException:
            self.discard(conn)  # cancelled mid-batch: the connection is out of step
            raise
        self.release(conn)
        if self.breaker.down_until:
            self.breaker.succeeded()
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = CommandError(str(reply), shard=self.name, reply=reply)
        return replies


class LoopPools:
    """One server's asyncio pools, one per event loop, each dropped when its loop shuts down
    (`shardcache.lifecycle.until_loop_ends`). A plain dict: a pool's connections refer to
    their loop, so a weak-keyed one would never let a loop go."""

    def __init__(self, leaf: Any) -> None:
        self._leaf = leaf
        self._pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._watches: dict[asyncio.AbstractEventLoop, Any] = {}

    @property
    def loops(self) -> int:
        return len(self._pools)

    def get(self, loop: asyncio.AbstractEventLoop) -> AsyncConnectionPool | None:
        pool = self._pools.get(loop)
        return pool if pool is not None else self._open(loop)

    def _open(self, loop: asyncio.AbstractEventLoop) -> AsyncConnectionPool | None:
        leaf = self._leaf
        settings = leaf.async_settings()
        if settings is None:
            return None
        factory = async_factory(*settings[:2], readonly=settings[2])
        if factory is None:
            return None
        with leaf.pools_lock:
            for other in [other for other in list(self._watches) if other.is_closed()]:
                self._forget(other)  # closed without shutting down: nothing else tells
            pool = self._pools[loop] = AsyncConnectionPool(
                factory,
                max_connections=leaf.max_connections,
                timeout=leaf.pool_timeout,
                read_timeout=settings[1].get("socket_timeout"),
                name=leaf.id,
                breaker=leaf.breaker,
                leaf=leaf,
            )
            self._watches[loop] = until_loop_ends(functools.partial(self._forget, loop))
        return pool

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close and drop ``loop``'s pool: the loop is shutting down, or is closed."""
        pool = self._pools.pop(loop, None)
        self._watches.pop(loop, None)
        if pool is not None:
            pool.close()

    def retire(self) -> None:
        for pool in list(self._pools.values()):
            pool.closed = True  # lent connections are closed on return; idle ones below
        self._end_loops()

    def shut(self) -> None:
        for pool in list(self._pools.values()):
            pool.shut()
        self._end_loops()

    def _end_loops(self) -> None:
        # An asyncio transport is closed from its own loop's thread: each running loop ends
        # its watch there (which closes its pool); a closed loop has nothing left to run.
        with self._leaf.pools_lock:
            watches = list(self._watches.items())
        for loop, watch in watches:
            if loop.is_closed():
                self._forget(loop)
            else:
                try:
                    loop.call_soon_threadsafe(end_watch, watch)
                except RuntimeError:  # closed meanwhile
                    self._forget(loop)


def pool_for(leaf: Any) -> AsyncConnectionPool | None:
    """``leaf``'s (a `RedisShard`) asyncio pool for the running event loop; None when its
    connections have no asyncio twin (a user's factory) or it was retired."""
    pools = leaf.async_pools
    if pools is None:
        with leaf.pools_lock:
            pools = leaf.async_pools
            if pools is None:
                pools = leaf.async_pools = LoopPools(leaf)
    return cast(LoopPools, pools).get(asyncio.get_running_loop())


# --- the shard protocol, asynchronously ---------------------------------------------------


def _pool_of(shard: Shard) -> tuple[Any, AsyncConnectionPool | None]:
    leaf_of = getattr(shard, "leaf", None)  # a `RecoveringShard`; memcache has none
    leaf = leaf_of() if leaf_of is not None else None
    return leaf, (pool_for(leaf) if leaf is not None else None)


async def execute(shard: Shard, args: Sequence[Any], key: bytes | None, idempotent: bool) -> Any:
    """`Shard.execute`, natively on asyncio where the shard allows it."""
    leaf, pool = _pool_of(shard)
    if pool is None:  # memcache, a user's connection class, a master being failed over
        return await asyncio.to_thread(shard.execute, *args, key=key, idempotent=idempotent)
    try:
        return await pool.execute(args, key, idempotent)
    except (CommandError, ShardUnavailableError) as exc:
        recovering = cast(RecoveringShard, shard)
        if not recovering.recoverable(exc):
            raise
        return await asyncio.to_thread(recovering.recover, args, key, idempotent, exc, leaf)


async def pipeline(shard: Shard, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """`Shard.pipeline`, natively on asyncio where the shard allows it."""
    leaf, pool = _pool_of(shard)
    if pool is None:
        return await asyncio.to_thread(shard.pipeline, commands)
    outcome: list[Any] | ShardUnavailableError
    try:
        outcome = await pool.pipeline(commands)
    except ShardUnavailableError as exc:
        outcome = exc
    return await _settle(shard, leaf, commands, outcome)


async def _settle(
    shard: Shard,
    leaf: Any,
    commands: Sequence[Sequence[Any]],
    outcome: list[Any] | ShardUnavailableError,
) -> list[Any]:
    # Replies as they are, unless the shard's topology can repair something in them.
    recovering = cast(RecoveringShard, shard)
    recoverable = recovering.recoverable
    if isinstance(outcome, ShardUnavailableError):
        if not recoverable(outcome):
            raise outcome
    elif not any(isinstance(r, CommandError) and recoverable(r) for r in outcome):
        return outcome
    return await asyncio.to_thread(recovering.settle, commands, leaf, outcome)


async def fan_out(
    commands: Mapping[Shard, Sequence[Sequence[Any]]],
) -> dict[Shard, list[Any] | ShardUnavailableError]:
    """Every shard's batch at once: each is sent before any reply is read (no task per
    shard); a shard that fails gives its error in place of its replies, as the sync
    fan-out does. Shards without asyncio connections run their batches in threads."""
    started: list[tuple[Shard, Any, AsyncConnectionPool | None, Any]] = []
    results: dict[Shard, list[Any] | ShardUnavailableError] = {}
    try:
        for shard, batch in commands.items():
            leaf, pool = _pool_of(shard)
            pending: Any
            if pool is None:
                pending = asyncio.ensure_future(asyncio.to_thread(shard.pipeline, batch))
            else:
                try:
                    pending = await pool.begin(batch)
                except ShardUnavailableError as exc:
                    pending = exc
            started.append((shard, leaf, pool, pending))
        while started:
            shard, leaf, pool, pending = started.pop(0)
            try:
                if pool is None:
                    results[shard] = await pending
                    continue
                outcome: list[Any] | ShardUnavailableError = pending
                if not isinstance(pending, ShardUnavailableError):
                    try:
                        outcome = await pool.finish(pending, len(commands[shard]))
                    except ShardUnavailableError as exc:
                        outcome = exc
                results[shard] = await _settle(shard, leaf, commands[shard], outcome)
            except ShardUnavailableError as exc:
                results[shard] = exc
    except BaseException:
        # Cancelled (or failed) part way: what was sent and not read must not be reused.
        for _, _, pool, pending in started:
            if pool is None:
                pending.cancel()
            elif not isinstance(pending, ShardUnavailableError):
                pool.discard(pending)
        raise
    return results
