"""The sharded memcache client as a topology for `Cache`.

`Cache` speaks a handful of Redis commands to its shards; this module answers them with
memcache operations through `ShardedMemcacheClient`. Each memcached is one protocol shard
(keys grouped as the client's shard function places them), and a batch runs on the client's
thread pool from the moment it is begun, so the servers work in parallel. Framework rules
(DESIGN.md section 3): ``add`` on a non-ACTIVE shard is "not stored" (so add-as-a-lock stays
safe) and ``incr`` there is a missing key.

Limits of memcache itself: no key listing (``Cache.clear`` needs ``flush=True``), whole
seconds for TTLs, no locks (``Cache.lock``), and decrements floor at 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NoReturn

import redis

from shardcache.errors import (
    CommandError,
    ConfigurationError,
    InvalidKeyError,
    OutOfRangeError,
    ShardUnavailableError,
)
from shardcache.protocols import Shard
from shardcache.scripts import INCR_EXISTING_SHA, SWAP_SHA, sha_of
from shardcache.topologies.memcache.client import ShardedMemcacheClient
from shardcache.topologies.memcache.model import (
    NO_EXPIRATION_INCR,
    CountResponse,
    GetResponse,
    Item,
    MemcachedState,
    MutateResponse,
    Status,
    validate_key,
)

__all__ = ["MemcacheShard", "MemcacheTopology"]

# Statuses that are answers, not failures: the caller reads them.
_OUTCOMES = frozenset(
    {Status.NO_ERROR, Status.KEY_NOT_FOUND, Status.KEY_EXISTS, Status.ITEM_NOT_STORED}
)

_THIRTY_DAYS = 30 * 24 * 3600  # memcached reads a larger expiration as a Unix time


def _expiration(ms: int) -> int:
    seconds = max(1, math.ceil(ms / 1000))
    return seconds if seconds <= _THIRTY_DAYS else int(time.time()) + seconds


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
        return self._run(args)

    def begin(self, commands: Sequence[Sequence[Any]]) -> _Running:
        return _Running(self, commands)

    def pipeline(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        return _Running(self, commands).finish()

    def scan(self, match: bytes, count: int = 1000) -> Iterator[bytes]:
        self._cmd_scan()

    def _cmd_scan(self, *args: Any) -> NoReturn:
        raise ConfigurationError(
            "memcache cannot list keys, so clear() cannot delete one prefix: "
            "call clear(flush=True) to empty every server"
        )

    def client(self) -> redis.Redis:
        raise ConfigurationError("Cache.lock needs Redis; memcache has no lock primitive")

    def close(self) -> None:
        self.memcache.close()

    # --- commands ----------------------------------------------------------------------------

    def _run(self, args: Sequence[Any]) -> Any:
        name = args[0].upper() if isinstance(args[0], bytes) else str(args[0]).upper().encode()
        handler = getattr(self, "_cmd_" + name.decode().lower(), None)
        if handler is None:
            raise CommandError(f"{name.decode()} is not available on memcache", shard=self.id)
        return handler(*args[1:])

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

    def _cmd_get(self, key: bytes) -> bytes | None:
        response = self.memcache.get(key)
        self._check(response, key)
        return response.value

    def _cmd_mget(self, *keys: bytes) -> list[bytes | None]:
        found = self.memcache.get_multi(keys)
        for key in keys:
            self._check(found[key], key)
        return [found[key].value for key in keys]

    def _cmd_exists(self, key: bytes) -> int:
        return 0 if self._cmd_pttl(key) == -2 else 1

    def _cmd_set(self, key: bytes, value: bytes, *options: Any) -> bytes | None:
        expiration, only_if_absent = 0, False
        rest = list(options)
        while rest:
            option = rest.pop(0)
            if option in (b"PX", "PX"):
                expiration = _expiration(int(rest.pop(0)))
            elif option in (b"NX", "NX"):
                only_if_absent = True
        item = Item(key, value, expiration=expiration)
        if only_if_absent:
            shard = self.memcache.manager.get_shard(key)
            if shard is not None and shard.state is not MemcachedState.ACTIVE:
                return None  # add on a non-ACTIVE shard is "not stored": add-as-lock stays safe
            response = self.memcache.add(item)
        else:
            response = self.memcache.set(item)
        self._check(response, key)
        return b"OK" if response.ok else None

    def set_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Plain ``SET key value [PX ms]`` commands as one pipelined memcache request."""
        items = [
            Item(c[1], c[2], expiration=_expiration(int(c[4])) if len(c) > 3 else 0)
            for c in commands
        ]
        replies: list[Any] = []
        for command, response in zip(commands, self.memcache.set_multi(items), strict=True):
            self._check(response, command[1])
            replies.append(b"OK" if response.ok else None)
        return replies

    def _cmd_del(self, *keys: bytes) -> int:
        responses = self.memcache.delete_multi(keys)
        for key, response in zip(keys, responses, strict=True):
            self._check(response, key)
        return sum(1 for r in responses if r.ok)

    _cmd_unlink = _cmd_del

    def _cmd_pexpire(self, key: bytes, ms: int) -> int:
        response = self.memcache.touch(key, _expiration(int(ms)))
        self._check(response, key)
        return 1 if response.ok else 0

    def _cmd_persist(self, key: bytes) -> int:
        response = self.memcache.touch(key, 0)  # expiration 0: never
        self._check(response, key)
        return 1 if response.ok else 0

    def _cmd_pttl(self, key: bytes) -> int:
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

    def _cmd_evalsha(self, sha: bytes, count: int, key: bytes, *args: Any) -> Any:
        # The cache layer's scripts (`shardcache.scripts`), each by its memcache equivalent.
        if sha == INCR_EXISTING_SHA:
            return self._count(key, int(args[0]), create=False)
        if sha == SWAP_SHA:
            return self._swap(key, args[0], args[1])
        raise CommandError(f"script {sha.decode()} has no memcache equivalent", shard=self.id)

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

    def _cmd_incrby(self, key: bytes, delta: int) -> int | None:
        # A missing key starts at delta (memcached counts are unsigned: at 0 if negative).
        return self._count(key, int(delta), create=True)

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

    def _cmd_eval(self, script: bytes, count: int, key: bytes, *args: Any) -> Any:
        return self._cmd_evalsha(sha_of(script), count, key, *args)

    def _cmd_flushdb(self) -> bytes:
        shard = self.memcache.manager.get_all_shards()[self.index]
        try:
            self.memcache.call(shard, "flush_all", 0, noreply=False)
        except ShardUnavailableError as exc:
            raise ShardUnavailableError(str(exc), shard=self.id) from exc
        return b"OK"


def _plain_set(command: Sequence[Any]) -> bool:
    return command[0] in (b"SET", "SET") and (
        len(command) == 3 or (len(command) == 5 and command[3] in (b"PX", "PX"))
    )


class _Running:
    """A batch for one memcached, started on the client's thread pool when begun."""

    def __init__(self, shard: MemcacheShard, commands: Sequence[Sequence[Any]]) -> None:
        self.shard = shard
        self.commands = commands
        self.future = shard.memcache.submit(self._run_all, shard, commands)

    @staticmethod
    def _run_all(shard: MemcacheShard, commands: Sequence[Sequence[Any]]) -> list[Any]:
        if len(commands) > 1 and all(_plain_set(c) for c in commands):
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

    capabilities: frozenset[str] = frozenset()  # no scripts, no key listing, no locks

    def __init__(self, client: ShardedMemcacheClient) -> None:
        self.client = client
        self._shards: dict[tuple[int, str], MemcacheShard] = {}

    def __repr__(self) -> str:
        return f"<MemcacheTopology {[s.address for s in self.client.manager.get_all_shards()]}>"

    def _shard(self, index: int, address: str) -> MemcacheShard:
        found = self._shards.get((index, address))
        if found is None:
            found = self._shards[(index, address)] = MemcacheShard(self.client, index, address)
        return found

    def shard_for(self, key: bytes, *, read: bool = False) -> Shard:
        validate_key(key)  # before any I/O, whatever the command (`InvalidKeyError`)
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
        return [self._shard(h.index, h.address) for h in self.client.manager.get_all_shards()]

    @property
    def closed(self) -> bool:
        return self.client.closed

    def close(self) -> None:
        """Stop the client's threads and close its connections; later calls raise
        `ClosedError`."""
        self.client.close()
