"""The asyncio wire layer: the same shards, spoken to through redis-py's asyncio connections.

Every shard of the sync topologies answers `leaf` (the `RedisShard` its commands go to now);
that server's `AsyncConnectionPool` (one per event loop) sends and reads them natively. What
is ours, as in the sync pool: a lean checkout (redis-py's asyncio pool checks every
connection's health on each checkout), the failure policy, and draining a batch's replies
from the hiredis reader in one loop. The rare repairs (a MOVED or ASK, a failed-over master,
a slot map to re-read) block on locks, sleeps and other nodes: they run once, in the sync
topology's own code, in a worker thread, so there is one implementation of each.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import redis.asyncio
import redis.asyncio.connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from shardcache.connections import (
    IO_ERRORS,
    REPLY_TYPES,
    _HiredisReader,
    _pack,
    _pack_many,
    after_failure,
)
from shardcache.errors import ClosedError, CommandError, ShardUnavailableError

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as _deadline

if TYPE_CHECKING:
    from shardcache.connections import RedisShard
    from shardcache.protocols import Shard

__all__ = ["AsyncConnectionPool", "execute", "fan_out", "pipeline"]

_ASYNC_IO_ERRORS = (*IO_ERRORS, asyncio.TimeoutError)

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
    ) -> None:
        self._factory = factory
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
                async with _deadline(self._timeout):
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

    @staticmethod
    def _drop(conn: redis.asyncio.connection.AbstractConnection) -> None:
        # A dropped connection is never used again: closing its transport (synchronous)
        # is all it needs, without waiting for the peer.
        writer = getattr(conn, "_writer", None)
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()

    # --- commands ------------------------------------------------------------------------

    async def execute(self, args: Sequence[Any], key: bytes | None, idempotent: bool) -> Any:
        """One command, with the sync `RedisShard.execute`'s policy: an error reply raises
        `CommandError`; a socket error `ShardUnavailableError`, after one retry on a fresh
        connection for an ``idempotent`` command whose pooled connection had gone stale."""
        conn = await self.acquire()
        reused = connected = conn.is_connected
        try:
            if not connected:
                await conn.connect()
                connected = True
            await conn.send_packed_command(_pack(conn, args), check_health=False)  # type: ignore[arg-type]
            reply = await conn.read_response()
        except ResponseError as exc:
            self.release(conn)
            raise CommandError(str(exc), shard=self.name, key=key, reply=exc) from exc
        except _ASYNC_IO_ERRORS as exc:
            self.discard(conn)
            sent, again = after_failure(connected, reused, idempotent, exc)
            if again:
                return await self.execute(args, key, False)
            raise ShardUnavailableError(
                str(exc) or type(exc).__name__, shard=self.name, key=key, sent=sent
            ) from exc
        except BaseException:
            self.discard(conn)  # cancelled mid-reply: the connection is out of step
            raise
        self.release(conn)
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
        conn = await self.acquire()
        connected = conn.is_connected
        try:
            if not connected:
                await conn.connect()
                connected = True
            await conn.send_packed_command(_pack_many(conn, commands), check_health=False)  # type: ignore[arg-type]
        except _ASYNC_IO_ERRORS as exc:
            self.discard(conn)
            sent, _ = after_failure(connected, connected, False, exc)
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
        try:
            replies = await self._read_many(conn, count)
        except _ASYNC_IO_ERRORS as exc:
            self.discard(conn)
            raise ShardUnavailableError(str(exc) or type(exc).__name__, shard=self.name) from exc
        except BaseException:
            self.discard(conn)  # cancelled mid-batch: the connection is out of step
            raise
        self.release(conn)
        for i, reply in enumerate(replies):
            if isinstance(reply, ResponseError):
                replies[i] = CommandError(str(reply), shard=self.name, reply=reply)
        return replies

    async def _read_many(
        self, conn: redis.asyncio.connection.AbstractConnection, count: int
    ) -> list[Any]:
        # As the sync `_read_many`: with hiredis, drain its reader in one loop (refilled by
        # redis-py's own socket read) under one deadline, instead of one guarded
        # ``read_response`` coroutine per reply.
        parser = getattr(conn, "_parser", None)
        reader = getattr(parser, "_reader", None)
        refill = getattr(parser, "read_from_socket", None)
        replies: list[Any] = []
        if _HiredisReader is not None and isinstance(reader, _HiredisReader) and refill:
            gets, reply_types = reader.gets, REPLY_TYPES
            async with _deadline(self._read_timeout):
                while len(replies) < count:
                    reply = gets()
                    if reply.__class__ in reply_types:
                        replies.append(reply)
                    elif isinstance(reply, redis.ConnectionError):
                        raise reply
                    elif isinstance(reply, Exception):
                        replies.append(reply)
                    else:
                        await refill()
            return replies
        for _ in range(count):
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies


# --- the shard protocol, asynchronously ---------------------------------------------------


def _pool_of(shard: Shard) -> tuple[RedisShard | None, AsyncConnectionPool | None]:
    leaf_of = getattr(shard, "leaf", None)
    leaf: RedisShard | None = leaf_of() if leaf_of is not None else None
    return leaf, (leaf.async_pool() if leaf is not None else None)


async def execute(shard: Shard, args: Sequence[Any], key: bytes | None, idempotent: bool) -> Any:
    """`Shard.execute`, natively on asyncio where the shard allows it."""
    leaf, pool = _pool_of(shard)
    if pool is None:  # memcache, a user's connection class, a master being failed over
        return await asyncio.to_thread(shard.execute, *args, key=key, idempotent=idempotent)
    try:
        return await pool.execute(args, key, idempotent)
    except (CommandError, ShardUnavailableError) as exc:
        if not shard.recoverable(exc):  # type: ignore[attr-defined]
            raise
        recover = shard.recover  # type: ignore[attr-defined]
        return await asyncio.to_thread(recover, args, key, idempotent, exc, leaf)


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
    leaf: RedisShard | None,
    commands: Sequence[Sequence[Any]],
    outcome: list[Any] | ShardUnavailableError,
) -> list[Any]:
    # Replies as they are, unless the shard's topology can repair something in them.
    recoverable = shard.recoverable  # type: ignore[attr-defined]
    if isinstance(outcome, ShardUnavailableError):
        if not recoverable(outcome):
            raise outcome
    elif not any(isinstance(r, CommandError) and recoverable(r) for r in outcome):
        return outcome
    settle = shard.settle  # type: ignore[attr-defined]
    return await asyncio.to_thread(settle, commands, leaf, outcome)


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
