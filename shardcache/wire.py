"""The Redis wire, shared by the sync pool (`shardcache.connections`) and the asyncio one
(`shardcache.aio`): packing, draining replies from hiredis, the I/O error set, the retry
rule, and every private name of another project that shardcache touches.

This module imports nothing of shardcache, so neither driver depends on the other.

Private names (the whole list; each has a tested fallback that costs speed, never
correctness):

- redis-py ``Connection._sock``: whether a sync connection is open, so a failure on a reused
  one may be retried, and the socket a command is written to (one ``sendall``, without
  redis-py's per-call checks). Fallback: "not known to be open", so redis-py's own
  ``connect()`` decides (a stale pooled connection costs its caller one failure instead of
  a retry), and redis-py's ``send_packed_command`` writes.
- redis-py ``Connection._parser`` and its ``_reader`` (a ``hiredis.Reader``) and
  ``read_from_socket``: read replies straight from hiredis, a batch's in one loop, instead
  of through redis-py's ``read_response`` layers. Fallback: ``read_response`` reply by reply.
- redis-py asyncio ``Connection._writer``: close a broken asyncio connection's transport at
  once, synchronously. Fallback: schedule redis-py's ``disconnect()`` on the running loop.

Django, Flask-Caching and pymemcache are used through public names only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

if sys.version_info >= (3, 11):
    from asyncio import timeout as deadline
else:  # redis-py depends on async-timeout before 3.11.3
    from async_timeout import timeout as deadline

__all__ = [
    "ASYNC_IO_ERRORS",
    "IO_ERRORS",
    "PRIVATE_NAMES",
    "REPLY_TYPES",
    "after_failure",
    "deadline",
    "detach_timed_out",
    "detach_timed_out_async",
    "drop_async",
    "is_open",
    "pack",
    "pack_many",
    "read_many",
    "read_many_async",
    "read_one",
    "send",
    "server_down",
    "tells_pushes_apart",
    "timed_out",
]

# Every private attribute read from another project, for review (see the module docstring).
PRIVATE_NAMES = (
    "redis.connection.AbstractConnection._sock",
    "redis.connection.AbstractConnection._parser",
    "redis._parsers.hiredis._HiredisParser._reader",
    "redis._parsers.hiredis._HiredisParser.read_from_socket",
    "redis.asyncio.connection.AbstractConnection._parser",
    "redis._parsers.hiredis._AsyncHiredisParser._reader",
    "redis._parsers.hiredis._AsyncHiredisParser.read_from_socket",
    "redis.asyncio.connection.AbstractConnection._writer",
)

# The private attribute names themselves (a test renames each to prove its fallback).
_SOCK, _PARSER, _READER, _WRITER = "_sock", "_parser", "_reader", "_writer"

# Socket-level failures: the connection is unusable and the outcome of the command unknown.
IO_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
ASYNC_IO_ERRORS = (*IO_ERRORS, asyncio.TimeoutError)

_hiredis_pack: Any
HiredisReader: Any
try:
    from hiredis import Reader as HiredisReader
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is optional
    _hiredis_pack = HiredisReader = None
# A RESP3 push on a data connection (hiredis >= 3.2 types it): not a reply to any command.
# The one we meet is the server's "tracking-redir-broken" when the near cache's listener is
# gone; the listener's own thread handles that loss. Skipped, never counted as a reply.
_PUSH: Any = None
with contextlib.suppress(ImportError):
    from hiredis import PushNotification as _PUSH

# What a reply is, as hiredis hands it back (errors aside), RESP2 and RESP3: redis-py 8
# speaks RESP3, where ZSCORE is a double (float), HGETALL a map (dict) and SMEMBERS a set
# (a list from hiredis, a set from redis-py's own parser). Anything else that ``gets()``
# returns is its "not enough data yet" marker, whichever object redis-py chose for it (its
# own private one today, hiredis's False by default): so no marker is ever taken for a
# reply, and no private name of redis-py is needed for it. The price: a RESP3 boolean
# ``#f`` reads as that marker. No command shardcache sends answers one (Lua's false
# arrives as a null); `Cache.command` users of such a command get a timeout, not a
# wrong value. A ``#t`` is a reply (True is nobody's marker).
REPLY_TYPES = frozenset({bytes, str, int, float, list, dict, set, type(None)})


def after_failure(
    connected: bool, reused: bool, idempotent: bool, error: BaseException
) -> tuple[bool, bool]:
    """The one retry rule, for the sync and asyncio paths alike: for a command whose
    connection failed, ``(sent, again)``.

    ``sent``: whether it may have reached the server, which is as soon as there was a
    connection to write to (a batch may go out in part, and the server runs every whole
    command it got); only a connection that could not be made certainly carried nothing.
    ``again``: whether to run it once more on a fresh connection: only an idempotent command,
    on a pooled connection that had gone stale, and never after a timeout (a call never
    waits more than its timeout).
    """
    return connected, idempotent and reused and not timed_out(error)


def timed_out(error: BaseException) -> bool:
    return isinstance(error, RedisTimeoutError | TimeoutError | asyncio.TimeoutError)


def server_down(connected: bool, error: BaseException) -> bool:
    """Whether a socket failure shows the server itself is unreachable now (for the circuit
    breaker): no connection could be made, or a call timed out. A connection that was made
    and then reset shows no more than that connection's end (a pooled one gone stale when
    the server restarted or closed it as idle): the next fresh connection will tell."""
    return not connected or timed_out(error)


def tells_pushes_apart() -> bool:
    """Whether our read loops can skip a RESP3 push (always, but with a hiredis too old to
    type them): the near cache's tracking can bring one onto a data connection."""
    return HiredisReader is None or _PUSH is not None


def detach_timed_out(conn: Any, connected: bool, error: BaseException) -> socket.socket | None:
    """The socket of a sync connection whose call timed out, taken out of it (disconnecting
    the connection then leaves the TCP connection open, for `shardcache.fence`); None for
    any other failure, or when the socket cannot be reached."""
    if not connected or not timed_out(error):
        return None
    sock = getattr(conn, _SOCK, None)
    if sock is not None:
        setattr(conn, _SOCK, None)
    return sock


def detach_timed_out_async(
    conn: Any, connected: bool, error: BaseException
) -> socket.socket | None:
    """`detach_timed_out` for an asyncio connection: a duplicate of its transport's socket,
    which keeps the TCP connection open when the transport closes."""
    if not connected or not timed_out(error):
        return None
    writer = getattr(conn, _WRITER, None)
    transport = getattr(writer, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return sock.dup() if sock is not None else None
    except Exception:  # an event loop whose sockets cannot be duplicated (no fence, then)
        return None


def is_open(conn: Any) -> bool:
    """Whether a sync redis-py connection has its socket (False when that cannot be told)."""
    return getattr(conn, _SOCK, None) is not None


def send(conn: Any, packed: list[bytes]) -> None:
    """Write packed commands on an open sync connection."""
    sock = getattr(conn, _SOCK, None)
    if sock is None:
        conn.send_packed_command(packed, check_health=False)
        return
    for chunk in packed:
        sock.sendall(chunk)


def read_one(conn: Any) -> Any:
    """One reply from a sync connection; an error reply raises it (a ``ResponseError``)."""
    gets, refill = _hiredis_of(conn)
    if gets is None:
        # Kept open after a timeout, for the fence (`detach_timed_out`); we discard it.
        return conn.read_response(disconnect_on_error=False)
    while True:
        reply = gets()
        if reply.__class__ in REPLY_TYPES or reply is True:
            return reply
        if reply.__class__ is _PUSH:
            continue
        if isinstance(reply, Exception):
            raise reply  # an error reply, or a connection error hiredis handed back
        refill()  # not a whole reply yet


def pack(conn: Any, args: Sequence[Any]) -> Any:
    """One command as bytes to send. hiredis's C packer when it is installed: redis-py's own
    wrapper first walks every argument in a Python generator, which costs more than the
    packing itself."""
    if _hiredis_pack is not None:
        return [_hiredis_pack(tuple(args))]
    return conn.pack_command(*args)


def pack_many(conn: Any, commands: Sequence[Sequence[Any]]) -> Any:
    """Many commands as one write."""
    if _hiredis_pack is not None:
        return [b"".join([_hiredis_pack(tuple(command)) for command in commands])]
    return conn.pack_commands(commands)


def _hiredis_of(conn: Any) -> tuple[Any, Any]:
    # (reader.gets, parser.read_from_socket) when ``conn`` parses with hiredis, else Nones.
    parser = getattr(conn, _PARSER, None)
    reader = getattr(parser, _READER, None)
    refill = getattr(parser, "read_from_socket", None)
    if HiredisReader is not None and isinstance(reader, HiredisReader) and refill is not None:
        return reader.gets, refill
    return None, None


def read_many(conn: Any, count: int) -> list[Any]:
    """Read ``count`` replies from a sync connection; error replies come back as
    ``ResponseError`` values in their places.

    redis-py reads one reply per call, and its ``read_response`` formats an error prefix and
    checks health each time: for the hundred replies of a cluster batch that is more than
    the parsing. With hiredis we drain its reader in one loop, refilling it through redis-py's
    own socket read; otherwise redis-py reads reply by reply.
    """
    gets, refill = _hiredis_of(conn)
    replies: list[Any] = []
    if gets is not None:
        reply_types = REPLY_TYPES
        while len(replies) < count:
            reply = gets()
            if reply.__class__ in reply_types or reply is True:
                replies.append(reply)
            elif reply.__class__ is _PUSH:
                continue
            elif isinstance(reply, RedisConnectionError):
                raise reply
            elif isinstance(reply, Exception):
                replies.append(reply)  # an error reply, in its place
            else:
                refill()  # not a whole reply yet
        return replies
    for _ in range(count):
        try:
            replies.append(conn.read_response(disconnect_on_error=False))
        except ResponseError as exc:
            replies.append(exc)
    return replies


async def read_many_async(conn: Any, count: int, read_timeout: float | None) -> list[Any]:
    """`read_many` on an asyncio connection, under one deadline for the whole batch."""
    gets, refill = _hiredis_of(conn)
    replies: list[Any] = []
    if gets is not None:
        reply_types = REPLY_TYPES
        async with deadline(read_timeout):
            while len(replies) < count:
                reply = gets()
                if reply.__class__ in reply_types or reply is True:
                    replies.append(reply)
                elif reply.__class__ is _PUSH:
                    continue
                elif isinstance(reply, RedisConnectionError):
                    raise reply
                elif isinstance(reply, Exception):
                    replies.append(reply)
                else:
                    await refill()
        return replies
    for _ in range(count):
        try:
            replies.append(await conn.read_response(disconnect_on_error=False))
        except ResponseError as exc:
            replies.append(exc)
    return replies


def drop_async(conn: Any) -> None:
    """Close a broken asyncio connection without waiting for the peer: it is never used
    again, so closing its transport (synchronous) is all it needs."""
    writer = getattr(conn, _WRITER, None)
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()
        return
    with contextlib.suppress(RuntimeError):  # no running loop: nothing is left to close
        asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
