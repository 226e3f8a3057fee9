"""A near cache: recently read values kept in the process, and dropped the moment the server
says they changed (Redis ``CLIENT TRACKING``, Redis 6 and later).

How it stays coherent:

- Each Redis server that the near cache reads from gets one `Tracker` per process: a
  listener connection subscribed to ``__redis__:invalidate`` (RESP2), read by one daemon
  thread. Data connections turn tracking on with ``REDIRECT`` to that listener, lazily,
  in the same write as their next command (`RedisShard` does it when the connection's
  redirect is not the listener's current id), in ``OPTIN`` mode: only the reads whose
  replies the near cache will keep are tracked (``CLIENT CACHING YES`` just before them),
  so the server's tracking table holds those keys and no others, whatever else the
  process reads. Why REDIRECT and not RESP3 pushes on the data
  connections: the replies on a data connection stay exactly the replies of its commands
  (our pipelines and the hiredis loop count them), the asyncio connections need nothing
  new, and one listener per server serves every connection, sync and asyncio.
- The race between a read and an invalidation: a read marks its key pending (a fresh token)
  before it is sent; an invalidation of the key removes the mark; the reply is stored only if
  its token is still the key's mark, and the tracker's epoch is the one the token saw.
- The tracker's epoch moves whenever its listener is lost (connection dropped, heartbeat
  missed) or replaced, and the entries read from that server are dropped with it; so is
  everything on a null invalidation (FLUSHALL, FLUSHDB). The cluster drops a slot's entries
  when the slot moves; a sentinel failover closes the old master's tracker.
- Values are kept encoded and decoded on every hit, so no caller ever shares an object
  with another; only a value that cannot change (a str, bytes, a number, a tuple of such) is
  kept decoded too, and handed out as it is.

redis-py has client-side caching only on its own standalone sync client (RESP3 pushes); it
has nothing for pools of servers, the cluster's slots moving, or asyncio: hence this module.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import select
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shardcache.errors import ConfigurationError
from shardcache.lifecycle import forget_after_fork
from shardcache.wire import _SOCK, _WRITER

if TYPE_CHECKING:
    from shardcache.connections import RedisShard

__all__ = [
    "CACHING",
    "ENCODED",
    "HEARTBEAT",
    "NearCache",
    "NearStats",
    "Token",
    "Tracker",
    "caching_allowed",
    "confirm_redirect",
    "near_cache_of",
    "redirect_command",
    "shareable",
]

logger = logging.getLogger(__name__)

# The listener pings its server this often when nothing else arrives, and gives it up (its
# server's entries dropped, a new listener dialled) after this much silence, times three.
HEARTBEAT = 1.0
# How often a thread serving hits reads the invalidations waiting on the listeners' sockets.
DRAIN_EVERY = 0.00025
_CHANNEL = b"__redis__:invalidate"
_numbers = itertools.count(1)
_FOREVER = math.inf
_ENTRY_OVERHEAD = 160  # bytes: the entry, its key in two dicts, the OrderedDict links


class Tracker:
    """The invalidation listener of one Redis server, shared by every near cache that reads
    from it in this process (the server's `RedisShard` owns it)."""

    def __init__(self, shard: RedisShard) -> None:
        self.name = shard.id
        self.number = next(_numbers)  # what the entries read through it keep
        self._connection_class, self._kwargs = shard.listener_settings()
        self.id: int | None = None  # the listener's CLIENT ID, once it is subscribed
        self.epoch = 0
        self.ready = False
        self.caches: weakref.WeakSet[NearCache] = weakref.WeakSet()
        self.losses = 0
        self._closed = threading.Event()
        self.stopped = False  # closed, or its thread ended (a plain flag: read on each miss)
        self.refusal: str | None = None  # why the server refused tracking, if it did
        self._conn: Any = None
        self._reading = threading.Lock()  # the listener's socket: its thread, or `drain`
        self._heard = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"shardcache-near {shard.id}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<Tracker {self.name} id={self.id} epoch={self.epoch} ready={self.ready}>"

    def wait_ready(self, timeout: float) -> bool:
        """Whether the listener is subscribed within ``timeout`` seconds (for tests, tools)."""
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline and not self._closed.is_set():
            time.sleep(0.005)
        return self.ready

    def close(self, *, wait: bool = True) -> None:
        """Stop listening, and drop the entries read from this server (``wait``: until the
        listener's thread has ended)."""
        self.stopped = True
        self._closed.set()
        self._lost()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()  # wakes the thread out of its read
        if wait and self._thread is not threading.current_thread():
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the listener thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self.stopped = True

    def _serve(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                self._listen()
                failures = 0
            except Exception as exc:
                if self._closed.is_set():
                    break
                failures += 1
                if failures == 1:
                    logger.warning(
                        "shardcache: near cache listener of %s lost (%s); its entries are "
                        "dropped and it reconnects",
                        self.name,
                        exc,
                    )
            self._lost()
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.disconnect()
            self._closed.wait(min(0.05 * 2**failures, HEARTBEAT))

    def _listen(self) -> None:
        conn = self._connection_class(**self._kwargs)
        self._conn = conn
        conn.connect()
        conn.send_command(b"CLIENT", b"ID")
        client_id = int(conn.read_response())
        conn.send_command(b"SUBSCRIBE", _CHANNEL)
        conn.read_response()
        if self._closed.is_set():
            return
        # The id before the epoch before ready: a reader that sees ready sees the new epoch,
        # and a connection it then uses is given the new id before its command.
        self.id = client_id
        self.epoch += 1
        self.ready = True
        self._heard = pinged = time.monotonic()
        # Wait on the socket itself, outside the lock: redis-py's can_read may read into
        # the parser's buffer (its pure-Python parser does), which only the holder of
        # ``_reading`` may touch; with another thread draining, that lost and replayed
        # messages. Without the socket, can_read is called under the lock.
        sock = getattr(conn, _SOCK, None)
        poller = select.poll()
        if sock is not None:
            poller.register(sock, select.POLLIN)
        while not self._closed.is_set():
            if sock is not None:
                ready = bool(poller.poll(HEARTBEAT / 4 * 1000))
            else:
                with self._reading:
                    ready = conn.can_read(timeout=HEARTBEAT / 4)
            if ready:
                with self._reading:
                    self._read_waiting(conn)
                continue
            now = time.monotonic()
            if now - self._heard > 3 * HEARTBEAT:
                raise TimeoutError(f"no answer to a heartbeat in {3 * HEARTBEAT:g}s")
            if now - pinged >= HEARTBEAT:
                with self._reading:
                    conn.send_command(b"PING")
                pinged = now

    def _read_waiting(self, conn: Any) -> None:
        # Every message already on the socket (at least one, when called after can_read).
        while conn.can_read(timeout=0):
            message = conn.read_response()
            self._heard = time.monotonic()
            self._dispatch(message)

    def drain(self) -> None:
        """Handle the invalidations waiting on the socket now, from the calling thread,
        unless the listener's own thread is at it (see `NearCache._drain`)."""
        conn = self._conn
        # Blocking (briefly) when the listener's thread is at it: waiting lets go of the GIL,
        # which that thread may be waiting for to finish.
        if conn is None or not self.ready or not self._reading.acquire(timeout=0.01):
            return
        try:
            self._read_waiting(conn)
        except Exception:  # a broken listener: its own thread sees it and reconnects
            pass
        finally:
            self._reading.release()

    def _dispatch(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) != 3 or message[0] != b"message":
            return  # the PING's pong, a subscribe confirmation
        keys = message[2]
        for cache in list(self.caches):
            if keys is None:  # FLUSHALL / FLUSHDB, or the server's tracking table full
                cache.flush(self)
            else:
                cache.invalidate(keys)

    def _lost(self) -> None:
        # Not ready before the new epoch: no token taken from now on is honoured, then
        # every entry read from this server goes.
        was_ready = self.ready
        self.ready = False
        self.epoch += 1
        if was_ready:
            self.losses += 1
        for cache in list(self.caches):
            cache.flush(self)

    def refused(self, error: BaseException) -> None:
        """The server refused ``CLIENT TRACKING`` (an ACL, a proxy): no near cache for it."""
        if self.refusal is None:
            logger.error(
                "shardcache: %s refused CLIENT TRACKING (%s); the near cache does not keep "
                "its values",
                self.name,
                error,
            )
        self.refusal = str(error)
        self.close(wait=False)  # from a caller's thread (or event loop): never block it


_MARK = "_shardcache_redirect"  # on a data connection: (its socket or writer, listener id)


def _transport(conn: Any) -> Any:
    return getattr(conn, _SOCK, None) or getattr(conn, _WRITER, None)


def redirect_command(conn: Any, tracker: Tracker | None) -> tuple[bytes | int, ...] | None:
    """The ``CLIENT TRACKING ON REDIRECT`` to send on ``conn`` (connected) before its next
    command: None when it already redirects to ``tracker``'s current listener from this very
    socket, or when there is no listener now (nothing read then is kept)."""
    if tracker is None or not tracker.ready:
        return None
    target = tracker.id
    mark = getattr(conn, _MARK, None)
    if mark is not None and mark[1] == target and mark[0] is _transport(conn):
        return None
    return (b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", target, b"OPTIN")  # type: ignore[return-value]


_NOOP = (b"ECHO", b"")


def caching_allowed(conn: Any, commands: Sequence[Sequence[Any]]) -> Sequence[Sequence[Any]]:
    """``commands``, with a leading `CACHING` replaced by a no-op when ``conn`` has no
    tracking on (its listener was not up yet): the server would refuse it, and a read
    sent then is not kept anyway."""
    if not commands or commands[0] is not CACHING:
        return commands
    mark = getattr(conn, _MARK, None)
    if mark is not None and mark[0] is _transport(conn):
        return commands
    return [_NOOP, *commands[1:]]


def confirm_redirect(conn: Any, tracker: Tracker, command: tuple[Any, ...], reply: Any) -> None:
    """Record ``command``'s success on ``conn``; a refusal turns ``tracker`` off."""
    if isinstance(reply, bytes | str) and reply in (b"OK", "OK"):
        setattr(conn, _MARK, (_transport(conn), command[4]))
    elif "does not exist" in str(reply):
        # The listener died since: its thread notices and dials a new one (a new epoch, so
        # nothing read through this connection meanwhile is kept); not a refusal.
        return
    else:
        tracker.refused(reply if isinstance(reply, BaseException) else ValueError(repr(reply)))


# Sent just before a read the near cache will keep: the server tracks that read (OPTIN).
CACHING = (b"CLIENT", b"CACHING", b"YES")

# In an entry's last field: the value is to be decoded on each hit (it could be mutated).
ENCODED: Any = object()

_IMMUTABLE = frozenset({str, bytes, int, float, complex, bool, type(None)})


def shareable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` can be handed to every caller as one object: exactly a str, bytes,
    number, bool or None, or a tuple or frozenset of such (subclasses could hold state)."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return True
    if (kind is tuple or kind is frozenset) and depth < 8:
        return all(shareable(item, depth + 1) for item in value)
    return False


Entry = tuple[bytes, float, int, "int | None", Any]


class Token:
    """A read in flight: stored only if no invalidation of its key came after it was sent."""

    __slots__ = ("epoch", "tracker")

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.epoch = tracker.epoch


@dataclass
class NearStats:
    """What a near cache did in this process."""

    entries: int
    bytes: int
    hits: int
    misses: int
    stored: int
    invalidations: int
    evictions: int
    flushes: int
    refused: int  # replies not stored: an invalidation or a lost listener came first


class NearCache:
    """An LRU of encoded values bounded by ``max_entries`` and ``max_bytes``, kept only for
    keys under one of ``prefixes`` (every key when empty), for at most the server's TTL and
    ``max_age`` seconds when set. A key is kept from its second miss on (`admits`), or from
    its first with ``admit_first``."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        prefixes: Sequence[bytes] = (),
        max_age: float | None = None,
        admit_first: bool = False,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ConfigurationError("near cache: max_entries and max_bytes must be positive")
        if max_age is not None and max_age <= 0:
            raise ConfigurationError("near cache: max_age must be positive (or None)")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.prefixes = tuple(prefixes)
        self.max_age = max_age
        self.admit_first = admit_first
        self._seen: set[bytes] = set()  # keys missed once (`admits`)
        # key -> (encoded value, expires (monotonic), its tracker's number, slot or None,
        # decoded value or ENCODED): a tuple of atomic values, which the garbage collector
        # stops tracking, so a full cache costs the collections nothing (a list with the
        # tracker in it made every miss 12 µs dearer).
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()
        self._pending: dict[bytes, Token] = {}
        self._lock = threading.Lock()
        self._bytes = 0
        self._drain_at = 0.0
        self.hits = self.misses = self.stored = self.refused = 0
        self.invalidations = self.evictions = self.flushes = 0
        self._trackers: weakref.WeakSet[Tracker] = weakref.WeakSet()
        self._known: set[int] = set()  # their numbers: a cheaper test than the WeakSet's
        forget_after_fork(self)

    def _after_fork(self) -> None:
        # A forked child has none of its parent's listeners: nothing here would be
        # invalidated any more.
        self._lock = threading.Lock()
        self._entries.clear()
        self._pending.clear()
        self._seen.clear()
        self._bytes = 0
        self._trackers = weakref.WeakSet()
        self._known = set()

    def __repr__(self) -> str:
        return f"<NearCache {len(self._entries)} entries, {self._bytes} bytes>"

    # --- the hot path: no lock ----------------------------------------------------------

    def get(self, key: bytes) -> Entry | None:
        """The entry of ``key`` if it is here and fresh, else None: ``entry[0]`` is the
        encoded value, ``entry[4]`` the decoded one when it is immutable (else `ENCODED`)."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        now = time.monotonic()
        if entry[1] <= now:
            self.misses += 1
            self.discard((key,))
            return None
        if now >= self._drain_at:
            self._drain(now)
            if key not in self._entries:  # invalidated just now
                self.misses += 1
                return None
        try:  # noqa: SIM105 - contextlib.suppress costs a third of a hit
            self._entries.move_to_end(key)
        except KeyError:  # invalidated meanwhile: this hit was still right when it began
            pass
        self.hits += 1
        return entry

    def get_many(self, keys: Iterable[bytes]) -> list[Entry | None]:
        """`get` of each key (one clock reading for them all)."""
        now = time.monotonic()
        if now >= self._drain_at:
            self._drain(now)
        entries = self._entries
        lookup, to_end = entries.get, entries.move_to_end
        found: list[Entry | None] = []
        append = found.append
        expired = []
        for key in keys:
            entry = lookup(key)
            if entry is not None and entry[1] <= now:
                expired.append(key)
                entry = None
            elif entry is not None:
                try:  # noqa: SIM105 - as in `get`
                    to_end(key)
                except KeyError:
                    pass
            append(entry)
        hits = sum(1 for entry in found if entry is not None)
        self.hits += hits
        self.misses += len(found) - hits
        if expired:
            self.discard(expired)
        return found

    def _drain(self, now: float) -> None:
        # Busy threads hold the GIL in turns of 5 ms, and the listener threads wait for it
        # behind them: a thread serving hits takes in the invalidations that have arrived,
        # at most once per DRAIN_EVERY, so they land within that even under load.
        self._drain_at = now + DRAIN_EVERY
        for tracker in list(self._trackers):
            tracker.drain()

    # --- reads from the server ----------------------------------------------------------

    def admits(self, key: bytes) -> bool:
        """Whether a miss of ``key`` is to be kept: from its second miss on (a doorkeeper,
        as in TinyLFU). A key read once and never again, the bulk of a miss-heavy load,
        then costs no TTL lookup, no store and no eviction of a hotter entry."""
        if self.admit_first or key in self._seen:
            return True
        seen = self._seen
        if len(seen) >= self.max_entries:
            seen.clear()  # a new window: what was seen once long ago is forgotten
        seen.add(key)
        return False

    def begin(self, keys: Iterable[bytes], tracker: Tracker | None) -> Token | None:
        """Mark ``keys`` as being read from ``tracker``'s server; None when that server's
        listener is not up (the reply will not be kept)."""
        if tracker is None or not tracker.ready:
            return None
        if tracker.number not in self._known:
            tracker.caches.add(self)
            self._trackers.add(tracker)
            self._known.add(tracker.number)
        token = Token(tracker)
        pending = self._pending
        for key in keys:
            pending[key] = token
        return token

    def store(
        self,
        key: bytes,
        raw: bytes | None,
        pttl: int,
        token: Token | None,
        slot: int | None,
        value: Any = None,
    ) -> None:
        """Keep the reply ``raw`` of ``key`` (its server TTL ``pttl`` ms, -1 for none) if
        nothing invalidated it since ``token`` was taken; ``value`` is its decoded value,
        kept too when it is immutable (`shareable`), so hits need not decode it again."""
        if token is None:
            return
        tracker = token.tracker
        with self._lock:
            if self._pending.get(key) is not token:
                self.refused += 1
                return
            del self._pending[key]
            if raw is None or not tracker.ready or tracker.epoch != token.epoch or pttl == -2:
                if raw is not None:
                    self.refused += 1
                return
            now = time.monotonic()
            expires = _FOREVER if pttl < 0 else now + pttl / 1000
            if self.max_age is not None:
                expires = min(expires, now + self.max_age)
            size = len(raw) + len(key) + _ENTRY_OVERHEAD
            if size > self.max_bytes:
                return
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0]) + len(key) + _ENTRY_OVERHEAD
            shared = value if value is not ENCODED and shareable(value) else ENCODED
            self._entries[key] = (raw, expires, tracker.number, slot, shared)
            self._bytes += size
            self.stored += 1
            entries = self._entries
            while len(entries) > self.max_entries or self._bytes > self.max_bytes:
                gone, entry = entries.popitem(last=False)
                self._bytes -= len(entry[0]) + len(gone) + _ENTRY_OVERHEAD
                self.evictions += 1

    def abandon(self, keys: Iterable[bytes], token: Token | None) -> None:
        """A read that got no reply: forget its marks."""
        if token is None:
            return
        with self._lock:
            for key in keys:
                if self._pending.get(key) is token:
                    del self._pending[key]

    # --- invalidation ---------------------------------------------------------------------

    def discard(self, keys: Iterable[bytes]) -> None:
        """Drop ``keys`` (a write through this process, or an expired entry)."""
        with self._lock:
            for key in keys:
                self._drop(key)

    def invalidate(self, keys: Iterable[bytes]) -> None:
        """The server says ``keys`` changed."""
        with self._lock:
            for key in keys:
                self.invalidations += 1
                self._drop(key)

    def _drop(self, key: bytes) -> None:
        self._pending.pop(key, None)
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[0]) + len(key) + _ENTRY_OVERHEAD

    def flush(self, tracker: Tracker | None = None) -> None:
        """Drop every entry (read from ``tracker``'s server, when given), and every read in
        flight."""
        with self._lock:
            self.flushes += 1
            self._pending.clear()
            if tracker is None:
                self._entries.clear()
                self._bytes = 0
                return
            number = tracker.number
            self._remove(key for key, entry in self._entries.items() if entry[2] == number)

    def drop_slots(self, slots: set[int]) -> None:
        """Drop the entries of cluster ``slots`` (they moved), and every read in flight."""
        with self._lock:
            self.flushes += 1
            self._pending.clear()
            self._remove(key for key, entry in self._entries.items() if entry[3] in slots)

    def _remove(self, keys: Iterable[bytes]) -> None:
        for key in list(keys):
            entry = self._entries.pop(key)
            self._bytes -= len(entry[0]) + len(key) + _ENTRY_OVERHEAD

    # --- figures ----------------------------------------------------------------------------

    def stats(self) -> NearStats:
        return NearStats(
            entries=len(self._entries),
            bytes=self._bytes,
            hits=self.hits,
            misses=self.misses,
            stored=self.stored,
            invalidations=self.invalidations,
            evictions=self.evictions,
            flushes=self.flushes,
            refused=self.refused,
        )

    def trackers(self) -> list[Tracker]:
        return list(self._trackers)


_OPTION_NAMES = {
    "ADMIT_FIRST": "admit_first",
    "MAX_ENTRIES": "max_entries",
    "MAX_BYTES": "max_bytes",
    "PREFIXES": "prefixes",
    "MAX_AGE": "max_age",
}


def near_cache_of(spec: Any) -> NearCache | None:
    """A `NearCache` from what a user configured: None/False (none), True (the defaults), a
    `NearCache`, or a mapping of its settings, lower-case keyword names or the framework
    spelling (``MAX_ENTRIES``, ``MAX_BYTES``, ``PREFIXES``, ``MAX_AGE``)."""
    if spec is None or spec is False:
        return None
    if spec is True:
        return NearCache()
    if isinstance(spec, NearCache):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            f"near_cache must be True, a mapping of settings or a NearCache, not {spec!r}"
        )
    settings: dict[str, Any] = {}
    allowed = set(_OPTION_NAMES.values())
    for name, value in spec.items():
        keyword = _OPTION_NAMES.get(str(name).upper(), str(name).lower())
        if keyword not in allowed:
            raise ConfigurationError(
                f"unknown near cache setting {name!r}; known: {', '.join(sorted(_OPTION_NAMES))}"
            )
        settings[keyword] = value
    prefixes = settings.get("prefixes", ())
    if isinstance(prefixes, str | bytes):
        prefixes = (prefixes,)
    settings["prefixes"] = tuple(p.encode() if isinstance(p, str) else bytes(p) for p in prefixes)
    for name in ("max_entries", "max_bytes"):
        if name in settings and (
            not isinstance(settings[name], int) or isinstance(settings[name], bool)
        ):
            raise ConfigurationError(f"near cache: {name} must be an integer")
    return NearCache(**settings)
