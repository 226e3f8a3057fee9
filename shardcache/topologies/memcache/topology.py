"""The sharded memcache client as a topology for `Cache`.

`Cache` says what it wants through the topology's dialect; here that is `MemcacheDialect`,
whose commands are memcache operations (`Op`) that `MemcacheShard` runs through
`ShardedMemcacheClient`. No Redis command is ever built or parsed on this path, and a shard
refuses anything that is not one of its operations. Each memcached is one protocol shard
(keys grouped as the client's shard function places them), and a batch runs on the client's
thread pool from the moment it is begun, so the servers work in parallel. Framework rules
(DESIGN.md section 3): ``add`` on a non-ACTIVE shard is "not stored" (so add-as-a-lock stays
safe) and ``incr`` there is a missing key.

Limits of memcache itself: no key listing (``Cache.clear`` needs ``flush=True``), whole
seconds for TTLs, no locks (``Cache.lock``), and decrements floor at 0.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis

from shardcache.errors import (
    CommandError,
    ConfigurationError,
    InvalidKeyError,
    OutOfRangeError,
    ShardUnavailableError,
)
from shardcache.protocols import STATES, TTL, Dialect, Shard
from shardcache.stats import ShardReport, memcache_report
from shardcache.topologies.memcache.client import ShardedMemcacheClient
from shardcache.topologies.memcache.model import (
    NO_EXPIRATION_INCR,
    CountResponse,
    GetResponse,
    Item,
    MemcachedState,
    MutateResponse,
    ShardState,
    Status,
    validate_key,
)
from shardcache.topologies.memcache.states_file import StatesFile

__all__ = ["MEMCACHE", "MemcacheDialect", "MemcacheShard", "MemcacheTopology", "Op"]

# Statuses that are answers, not failures: the caller reads them.
_OUTCOMES = frozenset(
    {Status.NO_ERROR, Status.KEY_NOT_FOUND, Status.KEY_EXISTS, Status.ITEM_NOT_STORED}
)

_THIRTY_DAYS = 30 * 24 * 3600  # memcached reads a larger expiration as a Unix time


def _expiration(ms: int | None) -> int:
    # memcached's expiration for a time to live in milliseconds (None: 0, never).
    if ms is None:
        return 0
    seconds = max(1, math.ceil(ms / 1000))
    return seconds if seconds <= _THIRTY_DAYS else int(time.time()) + seconds


class Op(enum.Enum):
    """The operations a memcache shard runs (the first item of each of its commands)."""

    GET = "get"  # key
    GET_MULTI = "get_multi"  # *keys
    SET = "set"  # key, data, expiration ms or None
    ADD = "add"  # key, data, expiration ms or None
    REPLACE = "replace"  # key, data, expiration ms or None
    DELETE = "delete"  # *keys
    TOUCH = "touch"  # key, expiration ms or None (never)
    EXISTS = "exists"  # key
    TTL = "ttl"  # key
    INCR = "incr"  # key, delta (a missing key starts at delta)
    INCR_EXISTING = "incr_existing"  # key, delta
    SWAP = "swap"  # key, expected, new
    FLUSH_ALL = "flush_all"


Command = tuple[Any, ...]


class MemcacheDialect:
    """`Cache`'s wants as memcache operations."""

    def get(self, key: bytes) -> Command:
        return (Op.GET, key)

    def mget(self, keys: Sequence[bytes]) -> Command:
        return (Op.GET_MULTI, *keys)

    def set(self, key: bytes, data: bytes, px: int | None, only_if_absent: bool) -> Command:
        return (Op.ADD if only_if_absent else Op.SET, key, data, px)

    def replace(self, key: bytes, data: bytes, px: int | None) -> Command:
        return (Op.REPLACE, key, data, px)

    def delete(self, keys: Sequence[bytes]) -> Command:
        return (Op.DELETE, *keys)

    def exists(self, key: bytes) -> Command:
        return (Op.EXISTS, key)

    def pexpire(self, key: bytes, px: int) -> Command:
        return (Op.TOUCH, key, px)

    def persist(self, key: bytes) -> list[Command]:
        return [(Op.TOUCH, key, None)]  # touch answers whether the key exists

    def pttl(self, key: bytes) -> Command:
        return (Op.TTL, key)

    def incrby(self, key: bytes, delta: int) -> Command:
        return (Op.INCR, key, delta)

    def incr_existing(self, key: bytes, delta: int) -> Command:
        return (Op.INCR_EXISTING, key, delta)

    def swap(self, key: bytes, expected: bytes, new: bytes) -> Command:
        return (Op.SWAP, key, expected, new)

    def flush(self) -> Command:
        return (Op.FLUSH_ALL,)

    def unscripted(self, command: Command) -> Command | None:
        return None  # memcache runs no scripts


MEMCACHE = MemcacheDialect()


class MemcacheShard:
    """The keys of one memcached (``index`` in the shard list) as a protocol shard."""

    def __init__(self, client: ShardedMemcacheClient, index: int, address: str) -> None:
        self.memcache = client
        self.index = index
        self.id = address

    def __repr__(self) -> str:
        return f"<MemcacheShard {self.index} {self.id}>"

    # --- the protocol ------------------------------------------------------------------------

    def execute(self, *args: Any, key: bytes | None = None, idempotent: bool = False) -> Any:
        """Run one memcache operation: ``args`` is ``(Op.X, *its arguments)``."""
        return self._run(args)

    def begin(self, commands: Sequence[Sequence[Any]]) -> _Running:
        return _Running(self, commands)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return _Running(self, commands).finish()

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        raise ConfigurationError(
            "memcache cannot list keys, so clear() cannot delete one prefix: "
            "call clear(flush=True) to empty every server"
        )

    def client(self) -> redis.Redis:
        raise ConfigurationError("Cache.lock needs Redis; memcache has no lock primitive")

    def close(self) -> None:
        self.memcache.close()

    # --- commands ----------------------------------------------------------------------------

    def _run(self, command: Sequence[Any]) -> Any:
        op = command[0]
        if op.__class__ is not Op:
            raise TypeError(
                f"memcache shard {self.id} got {op!r}: not a memcache operation "
                "(commands come from the topology's dialect, `MemcacheDialect`)"
            )
        return self._handlers[op](self, *command[1:])

    def _check(self, response: GetResponse | MutateResponse | CountResponse, key: bytes) -> None:
        """Raise the typed error of a failed response; the outcomes a caller reads (found,
        not found, exists, not stored) pass."""
        status = response.status
        if status in _OUTCOMES:
            return
        if status is Status.CONNECTION_UNAVAILABLE:
            raise ShardUnavailableError(str(response.error), shard=self.id, key=key)
        if isinstance(response.error, InvalidKeyError):
            raise InvalidKeyError(str(response.error))
        if status is Status.INCR_DECR_ON_NON_NUMERIC_VALUE:
            raise CommandError("value is not an integer (memcached)", shard=self.id, key=key)
        if status is Status.VALUE_TOO_LARGE:
            raise CommandError("value too large for memcached", shard=self.id, key=key)
        if status is Status.INVALID_ARGUMENTS and "numeric delta" in str(response.error):
            raise OutOfRangeError(f"memcached refused the delta: {response.error}")
        raise CommandError(f"{status.name}: {response.error}", shard=self.id, key=key)

    def _get(self, key: bytes) -> bytes | None:
        response = self.memcache.get(key)
        self._check(response, key)
        return response.value

    def _get_multi(self, *keys: bytes) -> list[bytes | None]:
        found = self.memcache.get_multi(keys)
        for key in keys:
            self._check(found[key], key)
        return [found[key].value for key in keys]

    def _set(self, key: bytes, value: bytes, px: int | None) -> bool | None:
        response = self.memcache.set(Item(key, value, expiration=_expiration(px)))
        self._check(response, key)
        return True if response.ok else None

    def _add(self, key: bytes, value: bytes, px: int | None) -> bool | None:
        shard = self.memcache.manager.get_shard(key)
        if shard is not None and shard.state is not MemcachedState.ACTIVE:
            return None  # add on a non-ACTIVE shard is "not stored": add-as-lock stays safe
        response = self.memcache.add(Item(key, value, expiration=_expiration(px)))
        self._check(response, key)
        return True if response.ok else None

    def _replace(self, key: bytes, value: bytes, px: int | None) -> bool | None:
        response = self.memcache.replace(Item(key, value, expiration=_expiration(px)))
        self._check(response, key)
        return True if response.ok else None

    def set_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """`Op.SET` commands as one pipelined memcache request."""
        items = [Item(c[1], c[2], expiration=_expiration(c[3])) for c in commands]
        replies: list[Any] = []
        for command, response in zip(commands, self.memcache.set_multi(items), strict=True):
            self._check(response, command[1])
            replies.append(True if response.ok else None)
        return replies

    def _delete(self, *keys: bytes) -> int:
        responses = self.memcache.delete_multi(keys)
        for key, response in zip(keys, responses, strict=True):
            self._check(response, key)
        return sum(1 for r in responses if r.ok)

    def _touch(self, key: bytes, px: int | None) -> int:
        response = self.memcache.touch(key, _expiration(px))  # None: 0, never expires
        self._check(response, key)
        return 1 if response.ok else 0

    def _exists(self, key: bytes) -> int:
        return 0 if self._ttl(key) == -2 else 1

    def _ttl(self, key: bytes) -> int:
        shard = self.memcache.manager.get_shard(key)
        if shard is None or shard.state is not MemcachedState.ACTIVE:
            return -2
        try:
            ttl = self.memcache.remaining_ttl(shard, key)
        except ShardUnavailableError as exc:
            raise ShardUnavailableError(str(exc), shard=self.id, key=key) from exc
        if ttl is None:
            return -2
        return -1 if ttl < 0 else ttl * 1000

    def _swap(self, key: bytes, expected: bytes, new: bytes) -> int:
        """SWAP: replace ``expected`` by ``new``, keeping the time to live (gets, then cas)."""
        found = self.memcache.gets(key)
        self._check(found, key)
        shard = self.memcache.manager.get_shard(key)
        if found.value != expected or not found.cas or shard is None:
            return 0
        try:
            ttl = self.memcache.remaining_ttl(shard, key)
        except ShardUnavailableError as exc:
            raise ShardUnavailableError(str(exc), shard=self.id, key=key) from exc
        if ttl is None:
            return 0  # expired meanwhile
        item = Item(key, new, found.flags, found.cas, expiration=max(ttl, 0))
        response = self.memcache.set(item)
        self._check(response, key)
        return 1 if response.ok else 0

    def _incr(self, key: bytes, delta: int) -> int | None:
        # A missing key starts at delta (memcached counts are unsigned: at 0 if negative).
        return self._count(key, int(delta), create=True)

    def _incr_existing(self, key: bytes, delta: int) -> int | None:
        return self._count(key, int(delta), create=False)

    def _count(self, key: bytes, delta: int, *, create: bool) -> int | None:
        operation = self.memcache.increment if delta >= 0 else self.memcache.decrement
        if create:
            response = operation(key, abs(delta), max(delta, 0), 0)
        else:
            response = operation(key, abs(delta), 0, NO_EXPIRATION_INCR)
        self._check(response, key)  # a bad key, a bad delta, a non-integer: typed errors
        shard = self.memcache.manager.get_shard(key)
        if response.status is Status.KEY_NOT_FOUND or (
            shard is not None and shard.state is not MemcachedState.ACTIVE
        ):
            return None  # incr on a non-ACTIVE shard is a missing key
        if response.status is not Status.NO_ERROR:  # e.g. the add that creates it failed
            raise CommandError(f"incr failed: {response.status.name}", shard=self.id, key=key)
        return response.count

    def _flush_all(self) -> bool:
        shard = self.memcache.manager.get_all_shards()[self.index]
        try:
            self.memcache.call(shard, "flush_all", 0, noreply=False)
        except ShardUnavailableError as exc:
            raise ShardUnavailableError(str(exc), shard=self.id) from exc
        return True

    _handlers: dict[Op, Callable[..., Any]] = {
        Op.GET: _get,
        Op.GET_MULTI: _get_multi,
        Op.SET: _set,
        Op.ADD: _add,
        Op.REPLACE: _replace,
        Op.DELETE: _delete,
        Op.TOUCH: _touch,
        Op.EXISTS: _exists,
        Op.TTL: _ttl,
        Op.INCR: _incr,
        Op.INCR_EXISTING: _incr_existing,
        Op.SWAP: _swap,
        Op.FLUSH_ALL: _flush_all,
    }


class _Running:
    """A batch for one memcached, started on the client's thread pool when begun."""

    def __init__(self, shard: MemcacheShard, commands: Sequence[Sequence[Any]]) -> None:
        self.shard = shard
        self.commands = commands
        self.future = shard.memcache.submit(self._run_all, shard, commands)

    @staticmethod
    def _run_all(shard: MemcacheShard, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if len(commands) > 1 and all(c[0] is Op.SET for c in commands):
            return shard.set_many(commands)  # the cache's set_many: one request, not N
        replies: list[Any] = []
        for command in commands:
            try:
                replies.append(shard._run(command))
            except CommandError as exc:
                replies.append(exc)
        return replies

    def finish(self) -> list[Any]:
        # A ShardUnavailableError fails the whole batch.
        return self.shard.memcache.wait(self.future, self.shard.id, len(self.commands))


class MemcacheTopology:
    """A `ShardedMemcacheClient` as a topology for `Cache`."""

    # No scripts, no key listing, no locks; shards with states.
    capabilities: frozenset[str] = frozenset({TTL, STATES})
    dialect: Dialect = MEMCACHE

    def __init__(
        self, client: ShardedMemcacheClient, *, states_file: StatesFile | None = None
    ) -> None:
        self.client = client
        self._shards: dict[tuple[int, str], MemcacheShard] = {}
        # Shared states: every call looks (at most every 0.25 s) whether the file changed.
        self.states_file = states_file
        self._poll = states_file.poll if states_file is not None else _nothing

    def __repr__(self) -> str:
        if self.closed:
            return "<MemcacheTopology closed>"
        return f"<MemcacheTopology {[s.address for s in self.client.manager.get_all_shards()]}>"

    def _shard(self, index: int, address: str) -> MemcacheShard:
        found = self._shards.get((index, address))
        if found is None:
            found = self._shards[(index, address)] = MemcacheShard(self.client, index, address)
        return found

    def shard_for(self, key: bytes, *, read: bool = False) -> Shard:
        validate_key(key)  # before any I/O, whatever the command (`InvalidKeyError`)
        self._poll()
        handle = self.client.manager.get_shard(key)
        # An unmapped key still needs a shard object: the client answers it with an error.
        return (
            self._shard(-1, "unmapped")
            if handle is None
            else self._shard(handle.index, handle.address)
        )

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        keys = list(keys)
        for key in keys:  # all of them before any I/O: no half-done set_many
            validate_key(key)
        self._poll()
        groups: dict[Shard, list[list[bytes]]] = {}
        for handle, run in self.client.manager.get_shards_for_keys(keys).items():
            shard = (
                self._shard(-1, "unmapped")
                if handle is None
                else self._shard(handle.index, handle.address)
            )
            groups[shard] = [run]
        return groups

    def shards(self) -> list[Shard]:
        self._poll()
        return [self._shard(h.index, h.address) for h in self.client.manager.get_all_shards()]

    def reports(self) -> list[ShardReport]:
        """A `ShardReport` of every memcached, with its state; one that failed lately (its
        breaker open) is reported without being dialled."""
        found = []
        self._poll()
        for handle in self.client.manager.get_all_shards():
            healthy = handle.healthy
            found.append(
                memcache_report(
                    handle.address,
                    handle.state.value,
                    healthy,
                    lambda h=handle: self.client.call(h, "stats"),  # type: ignore[misc]
                )
            )
        return found

    def share_shard_state(
        self, address: str, state: MemcachedState | str, warm_source: str | None = None
    ) -> list[ShardState]:
        """Give shard ``address`` a new state in every process that shares this topology's
        states file (``SHARD_STATES_FILE``), this one included; the new list."""
        if self.states_file is None:
            raise ConfigurationError(
                "no shared states: set OPTIONS['SHARD_STATES_FILE'] (the same path in every "
                "process) so that running processes see the change"
            )
        wanted = MemcachedState(str(getattr(state, "value", state)).upper())
        current = [
            ShardState(h.address, h.state, h.warm_source.address if h.warm_source else None)
            for h in self.client.manager.get_all_shards()
        ]
        if address not in {s.address for s in current}:
            known = ", ".join(s.address for s in current)
            raise ConfigurationError(f"no memcache shard {address!r} here (known: {known})")
        states = [
            ShardState(address, wanted, warm_source) if s.address == address else s for s in current
        ]
        self.states_file.write(self.states_file.path, states)
        self.client.manager.update_shard_states(states)
        return states

    def update_shard_states(self, states: Sequence[Any]) -> None:
        """Give the shards new states at run time (`ShardManager.update_shard_states`)."""
        self.client.manager.update_shard_states(list(states))

    @property
    def closed(self) -> bool:
        return self.client.closed

    def close(self) -> None:
        """Stop the client's threads and close its connections; later calls raise
        `ClosedError`."""
        self.client.close()


def _nothing() -> None:
    pass
