"""The sharded memcache client: godropbox's ShardedClient over pymemcache, with shard states.

Every operation follows DESIGN.md's table 3a: a shard's state decides whether it is
contacted at all, and a skipped shard gets a made-up answer (reads: a miss with cas 0;
writes: success with cas 0) without any network traffic. Keys are checked before any I/O.
Batch calls send one request per shard (``get_many``/``gets_many``, ``set_many``), shards in
parallel, and one failing shard never raises for the others: its keys carry the error.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any, TypeVar

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
)

from shardcache.errors import ShardUnavailableError, key_text, text_of
from shardcache.lifecycle import Workers
from shardcache.topologies.memcache.manager import ShardHandle, StaticShardManager
from shardcache.topologies.memcache.model import (
    NO_EXPIRATION_INCR,
    CountResponse,
    GetResponse,
    Item,
    MemcachedState,
    MutateResponse,
    StatResponse,
    Status,
    VersionResponse,
    validate_key,
)

__all__ = ["ShardedMemcacheClient"]

T = TypeVar("T")
ACTIVE, WRITE_ONLY, WARM_UP, DOWN = (
    MemcachedState.ACTIVE,
    MemcachedState.WRITE_ONLY,
    MemcachedState.WARM_UP,
    MemcachedState.DOWN,
)
_CONNECTION_ERRORS = (OSError, socket.timeout, MemcacheUnexpectedCloseError)
_SENTINEL_READ = (ACTIVE, WRITE_ONLY, WARM_UP)


def _status_of(exc: Exception) -> Status:
    """The response status for an error from pymemcache."""
    text = str(exc).lower()
    if isinstance(exc, (*_CONNECTION_ERRORS, ShardUnavailableError)):
        return Status.CONNECTION_UNAVAILABLE
    if isinstance(exc, MemcacheUnknownCommandError):
        return Status.UNKNOWN_COMMAND
    if isinstance(exc, MemcacheIllegalInputError):
        return Status.INVALID_ARGUMENTS
    if isinstance(exc, MemcacheServerError):
        if "too large" in text:
            return Status.VALUE_TOO_LARGE
        if "out of memory" in text:
            return Status.OUT_OF_MEMORY
    if isinstance(exc, MemcacheClientError) and "non-numeric" in text:
        return Status.INCR_DECR_ON_NON_NUMERIC_VALUE
    return Status.INVALID_ARGUMENTS


class ShardedMemcacheClient:
    """The whole client API of DESIGN.md section 3 over a `StaticShardManager`.

    ``invalidate_non_active``: deletes are also sent to WRITE_ONLY shards (a delete is an
    invalidation). ``warm_exptime``: the TTL given to a read-through value whose remaining
    TTL is unknown; ``warm_max_ttl`` caps read-through TTLs. ``skip_down``: flush / stat /
    version / verbosity do not dial DOWN shards.
    """

    def __init__(
        self,
        manager: StaticShardManager,
        *,
        invalidate_non_active: bool = False,
        warm_exptime: int = 0,
        warm_max_ttl: int | None = None,
        skip_down: bool = False,
    ) -> None:
        self.manager = manager
        self.invalidate_non_active = invalidate_non_active
        self.warm_exptime = warm_exptime
        self.warm_max_ttl = warm_max_ttl
        self.skip_down = skip_down
        self.workers = Workers("shardcache-memcache", 16)

    # --- plumbing -----------------------------------------------------------------------------

    def call(self, shard: ShardHandle, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call pymemcache's ``method`` on ``shard`` under the health rules: a shard that
        failed lately is not dialled again before its retry timeout (its keys fail fast,
        never move), and a connection failure raises `ShardUnavailableError`."""
        if not shard.healthy:
            raise ShardUnavailableError(
                f"Connection unavailable for memcache shard {shard.index}: marked down",
                shard=shard.address,
                sent=False,
            )
        try:
            result = shard.call(method, *args, **kwargs)
        except _CONNECTION_ERRORS as exc:
            self.manager.mark_unhealthy(shard)
            raise ShardUnavailableError(
                f"Connection unavailable for memcache shard {shard.index}: {exc!r}",
                shard=shard.address,
            ) from exc
        shard.count("ok")
        return result

    def _per_shard(
        self, groups: dict[ShardHandle | None, list[T]], work: Callable[[ShardHandle, list[T]], Any]
    ) -> list[tuple[ShardHandle | None, list[T], Any]]:
        """Run ``work`` for each shard's group, groups in parallel; an exception is returned
        in place of that group's result."""

        def run(shard: ShardHandle | None, group: list[T]) -> Any:
            if shard is None:
                return None
            try:
                return work(shard, group)
            except (MemcacheError, ShardUnavailableError, OSError) as exc:
                return exc

        items = list(groups.items())
        futures = [self.workers.submit(run, shard, group) for shard, group in items[1:]]
        results = [run(*items[0])] if items else []
        results += [
            self.wait(future, shard.address if shard else "", len(group))
            for (shard, group), future in zip(items[1:], futures, strict=True)
        ]
        return [
            (shard, group, result) for (shard, group), result in zip(items, results, strict=True)
        ]

    @staticmethod
    def _split_keys(keys: Iterable[bytes | str]) -> tuple[list[bytes], dict[bytes, Exception]]:
        valid: list[bytes] = []
        invalid: dict[bytes, Exception] = {}
        for key in keys:
            try:
                valid.append(validate_key(key))
            except ValueError as exc:
                raw = _raw_key(key)
                invalid[raw] = exc
        return valid, invalid

    # --- reads -----------------------------------------------------------------------------------

    def get(self, key: bytes | str) -> GetResponse:
        try:
            data = validate_key(key)
        except ValueError:
            return next(iter(self.get_multi([key]).values()))
        shard = self.manager.get_shard(data)
        if shard is None or shard.state is not ACTIVE:
            return next(iter(self.get_multi([data]).values()))
        # The common case without the batch machinery: one ACTIVE shard, one key.
        try:
            hit = self.call(shard, "get", data)
        except (MemcacheError, ShardUnavailableError) as exc:
            return GetResponse(data, _status_of(exc), error=exc)
        if hit is None:
            return GetResponse(data)
        return GetResponse(data, Status.NO_ERROR, hit[0], hit[1])

    def gets(self, key: bytes | str) -> GetResponse:
        """`get` with the item's CAS id (from the server, or 0 for a skipped shard)."""
        return next(iter(self._read([key], with_cas=True, sentinels=False).values()))

    def get_multi(self, keys: Iterable[bytes | str]) -> dict[bytes, GetResponse]:
        return self._read(keys, with_cas=False, sentinels=False)

    def get_sentinels(self, keys: Iterable[bytes | str]) -> dict[bytes, GetResponse]:
        """Reads for the consistent-caching protocol: WRITE_ONLY and WARM_UP shards are read
        too, with CAS ids, and never read through."""
        return self._read(keys, with_cas=True, sentinels=True)

    def _read(
        self, keys: Iterable[bytes | str], *, with_cas: bool, sentinels: bool
    ) -> dict[bytes, GetResponse]:
        valid, invalid = self._split_keys(keys)
        out: dict[bytes, GetResponse] = {
            k: GetResponse(k, Status.INVALID_ARGUMENTS, error=e) for k, e in invalid.items()
        }

        def work(shard: ShardHandle, group: list[bytes]) -> dict[bytes, GetResponse]:
            state = shard.state
            readable = state in _SENTINEL_READ if sentinels else state is ACTIVE
            read_through = not sentinels and state is WARM_UP and shard.warm_source is not None
            if not (readable or read_through):
                shard.count("skipped")
                return {k: GetResponse(k) for k in group}
            found = self._fetch(shard, group, with_cas)
            if read_through:
                assert shard.warm_source is not None
                missing = [k for k in group if k not in found]
                if missing:
                    found.update(self._read_through(shard, shard.warm_source, missing, with_cas))
            return {k: found.get(k, GetResponse(k)) for k in group}

        for shard, group, result in self._per_shard(self.manager.get_shards_for_keys(valid), work):
            if shard is None:
                out.update(
                    {k: GetResponse(k, Status.UNMAPPED_KEY, error=_unmapped(k)) for k in group}
                )
            elif isinstance(result, Exception):
                out.update({k: GetResponse(k, _status_of(result), error=result) for k in group})
            else:
                out.update(result)
        return out

    def _fetch(
        self, shard: ShardHandle, keys: list[bytes], with_cas: bool
    ) -> dict[bytes, GetResponse]:
        if with_cas:
            raw = self.call(shard, "gets_many", keys)
            return {
                k: GetResponse(k, Status.NO_ERROR, value[0], value[1], int(cas))
                for k, (value, cas) in raw.items()
            }
        raw = self.call(shard, "get_many", keys)
        return {k: GetResponse(k, Status.NO_ERROR, v[0], v[1]) for k, (v) in raw.items()}

    def _read_through(
        self, cold: ShardHandle, warm: ShardHandle, keys: list[bytes], with_cas: bool
    ) -> dict[bytes, GetResponse]:
        """Cold misses read from the warm source; a hit is ``add``-ed to the cold shard with
        the warm item's remaining TTL (``mg <key> t``), then returned."""
        found: dict[bytes, GetResponse] = {}
        for key in keys:
            ttl = self.remaining_ttl(warm, key)
            if ttl is None:
                continue  # not in the warm source either (or expired)
            hit = self.call(warm, "get", key)
            if hit is None:
                continue
            value, flags = hit
            expire = self.warm_exptime if ttl < 0 else ttl
            if self.warm_max_ttl is not None:
                expire = min(expire or self.warm_max_ttl, self.warm_max_ttl)
            self.call(cold, "add", key, value, expire, noreply=False, flags=flags)
            cold.count("backfills")
            warm.count("warm_hits")
            if with_cas:
                again = self._fetch(cold, [key], True).get(key)
                if again is not None:
                    found[key] = again
                    continue
            found[key] = GetResponse(key, Status.NO_ERROR, value, flags)
        return found

    def remaining_ttl(self, shard: ShardHandle, key: bytes) -> int | None:
        """Seconds left for ``key`` on ``shard`` (-1: never expires), None if absent."""
        line = self.call(shard, "meta_ttl", key)
        if not line.startswith(b"HD"):
            return None
        for flag in line.split()[1:]:
            if flag.startswith(b"t"):
                return int(flag[1:])
        return -1

    # --- writes --------------------------------------------------------------------------------

    def set(self, item: Item) -> MutateResponse:
        """Store ``item``; conditional (CAS) when ``item.cas`` is not 0."""
        try:
            key = validate_key(item.key)
        except ValueError:
            return self.set_multi([item])[0]
        shard = self.manager.get_shard(key)
        if shard is None or shard.state is not ACTIVE:
            return self.set_multi([item])[0]
        return self._store(shard, "set", key, item)  # one key on an ACTIVE shard: no batching

    def set_multi(self, items: Sequence[Item]) -> list[MutateResponse]:
        return self._write(items, "set", states=(ACTIVE,))

    def _set_batch(
        self, shard: ShardHandle, group: list[tuple[int, bytes, Item]]
    ) -> list[MutateResponse]:
        """Plain sets (cas 0) of one shard in one pipelined request per (expiration, flags)."""
        by_options: dict[tuple[int, int], dict[bytes, bytes]] = {}
        for _, key, item in group:
            by_options.setdefault((item.expiration, item.flags), {})[key] = item.value
        failed: dict[bytes, MutateResponse] = {}
        for (expiration, flags), values in by_options.items():
            try:
                for key in self.call(
                    shard, "set_many", values, expiration, noreply=False, flags=flags
                ):
                    key = key.encode() if isinstance(key, str) else key
                    failed[key] = MutateResponse(key, Status.ITEM_NOT_STORED)
            except MemcacheServerError:  # one value too large fails the request: one by one
                for key, value in values.items():
                    failed[key] = self._store(
                        shard, "set", key, Item(key, value, flags, 0, expiration)
                    )
        return [failed.get(key) or MutateResponse(key) for _, key, _ in group]

    def set_sentinels(self, items: Sequence[Item]) -> list[MutateResponse]:
        return self._write(items, "set", states=_SENTINEL_READ, warm_ok=True)

    def cas_multi(self, items: Sequence[Item]) -> list[MutateResponse]:
        """CAS each item; an item with cas 0 is an ``add``."""
        return self._write(items, "cas", states=(ACTIVE,))

    def cas_sentinels(self, items: Sequence[Item]) -> list[MutateResponse]:
        return self._write(items, "cas", states=_SENTINEL_READ, warm_ok=True)

    def add(self, item: Item) -> MutateResponse:
        return self.add_multi([item])[0]

    def add_multi(self, items: Sequence[Item]) -> list[MutateResponse]:
        return self._write(items, "add", states=(ACTIVE,))

    def replace(self, item: Item) -> MutateResponse:
        return self._write([item], "replace", states=(ACTIVE,))[0]

    def append(self, key: bytes | str, value: bytes) -> MutateResponse:
        return self._write([Item(key, value)], "append", states=(ACTIVE,))[0]

    def prepend(self, key: bytes | str, value: bytes) -> MutateResponse:
        return self._write([Item(key, value)], "prepend", states=(ACTIVE,))[0]

    def touch(self, key: bytes | str, expiration: int) -> MutateResponse:
        return self._write([Item(key, expiration=expiration)], "touch", states=(ACTIVE,))[0]

    def _write(
        self,
        items: Sequence[Item],
        op: str,
        *,
        states: tuple[MemcachedState, ...],
        warm_ok: bool = False,
    ) -> list[MutateResponse]:
        out: dict[int, MutateResponse] = {}
        keyed: list[tuple[int, bytes, Item]] = []
        for position, item in enumerate(items):
            try:
                keyed.append((position, validate_key(item.key), item))
            except ValueError as exc:
                raw = _raw_key(item.key)
                out[position] = MutateResponse(raw, Status.INVALID_ARGUMENTS, error=exc)
        groups: dict[ShardHandle | None, list[tuple[int, bytes, Item]]] = {}
        for entry in keyed:
            groups.setdefault(self.manager.get_shard(entry[1]), []).append(entry)

        def work(shard: ShardHandle, group: list[tuple[int, bytes, Item]]) -> list[MutateResponse]:
            if shard.state not in states:
                shard.count("skipped")
                return [MutateResponse(key) for _, key, _ in group]
            if op == "set" and not any(item.cas for _, _, item in group):
                responses = self._set_batch(shard, group)
            else:
                responses = [self._store(shard, op, key, item) for _, key, item in group]
            if warm_ok and shard.state is WARM_UP:  # a warm-up write never fails
                return [MutateResponse(r.key) for r in responses]
            return responses

        for shard, group, result in self._per_shard(groups, work):
            for index, (position, key, _) in enumerate(group):
                if shard is None:
                    out[position] = MutateResponse(key, Status.UNMAPPED_KEY, error=_unmapped(key))
                elif isinstance(result, Exception):
                    ok = warm_ok and shard.state is WARM_UP
                    out[position] = (
                        MutateResponse(key)
                        if ok
                        else MutateResponse(key, _status_of(result), error=result)
                    )
                else:
                    out[position] = result[index]
        return [out[position] for position in range(len(items))]

    def _store(self, shard: ShardHandle, op: str, key: bytes, item: Item) -> MutateResponse:
        try:
            if op == "touch":
                found = self.call(shard, "touch", key, item.expiration, noreply=False)
                return MutateResponse(key, Status.NO_ERROR if found else Status.KEY_NOT_FOUND)
            if op in ("set", "cas") and item.cas:
                stored = self.call(
                    shard, "cas", key, item.value, item.cas, item.expiration, False, item.flags
                )
                if stored is None:
                    return MutateResponse(key, Status.KEY_NOT_FOUND)
                return MutateResponse(key, Status.NO_ERROR if stored else Status.KEY_EXISTS)
            command = "add" if op == "cas" else op
            if command in ("append", "prepend"):
                done = self.call(shard, command, key, item.value, noreply=False)
            else:
                done = self.call(
                    shard,
                    command,
                    key,
                    item.value,
                    item.expiration,
                    noreply=False,
                    flags=item.flags,
                )
        except (MemcacheError, ShardUnavailableError) as exc:
            return MutateResponse(key, _status_of(exc), error=exc)
        if done:
            return MutateResponse(key)
        if op == "cas":  # an add (cas 0) that found the key
            return MutateResponse(key, Status.KEY_EXISTS)
        return MutateResponse(key, Status.ITEM_NOT_STORED)

    # --- deletes and counters -----------------------------------------------------------------

    def delete(self, key: bytes | str) -> MutateResponse:
        return self.delete_multi([key])[0]

    def delete_multi(self, keys: Sequence[bytes | str]) -> list[MutateResponse]:
        out: list[MutateResponse] = []
        for key in keys:
            try:
                data = validate_key(key)
            except ValueError as exc:
                raw = _raw_key(key)
                out.append(MutateResponse(raw, Status.INVALID_ARGUMENTS, error=exc))
                continue
            shard = self.manager.get_shard(data)
            if shard is None:
                out.append(MutateResponse(data, Status.UNMAPPED_KEY, error=_unmapped(data)))
                continue
            targets = []
            if shard.state is ACTIVE or (shard.state is WRITE_ONLY and self.invalidate_non_active):
                targets = [shard]
            elif shard.state is WARM_UP and shard.warm_source is not None:
                targets = [shard, shard.warm_source]  # never let the warm copy come back
            response = MutateResponse(data)
            for target in targets:
                try:
                    existed = self.call(target, "delete", data, noreply=False)
                except (MemcacheError, ShardUnavailableError) as exc:
                    response = MutateResponse(data, _status_of(exc), error=exc)
                    break
                if target is shard and shard.state is ACTIVE and not existed:
                    response = MutateResponse(data, Status.KEY_NOT_FOUND)
            out.append(response)
        return out

    def increment(
        self, key: bytes | str, delta: int, init_value: int = 0, expiration: int = 0
    ) -> CountResponse:
        """Add ``delta``; a missing key is created at ``init_value`` (with ``expiration``),
        unless ``expiration`` is `NO_EXPIRATION_INCR`, which makes it KEY_NOT_FOUND."""
        return self._count(key, delta, init_value, expiration, "incr")

    def decrement(
        self, key: bytes | str, delta: int, init_value: int = 0, expiration: int = 0
    ) -> CountResponse:
        """Subtract ``delta`` (memcached floors at 0); a missing key as in `increment`."""
        return self._count(key, delta, init_value, expiration, "decr")

    def _count(
        self, key: bytes | str, delta: int, init_value: int, expiration: int, op: str
    ) -> CountResponse:
        try:
            data = validate_key(key)
        except ValueError as exc:
            raw = _raw_key(key)
            return CountResponse(raw, Status.INVALID_ARGUMENTS, error=exc)
        shard = self.manager.get_shard(data)
        if shard is None:
            return CountResponse(data, Status.UNMAPPED_KEY, error=_unmapped(data))
        if shard.state is not ACTIVE:
            shard.count("skipped")
            return CountResponse(data)
        try:
            for _ in range(2):  # a creator racing us between the miss and our add: count again
                value = self.call(shard, op, data, delta, noreply=False)
                if value is not None:
                    return CountResponse(data, count=int(value))
                if expiration == NO_EXPIRATION_INCR:
                    return CountResponse(data, Status.KEY_NOT_FOUND)
                initial = b"%d" % init_value
                if self.call(shard, "add", data, initial, expiration, noreply=False):
                    return CountResponse(data, count=init_value)
            return CountResponse(data, Status.ITEM_NOT_STORED)
        except (MemcacheError, ShardUnavailableError) as exc:
            return CountResponse(data, _status_of(exc), error=exc)

    # --- every shard ---------------------------------------------------------------------------

    def _everyone(
        self, method: str, *args: Any, **kwargs: Any
    ) -> tuple[dict[int, Any], dict[int, Exception]]:
        results: dict[int, Any] = {}
        errors: dict[int, Exception] = {}
        for shard in self.manager.get_all_shards():
            if shard.state is DOWN and self.skip_down:
                continue
            try:
                results[shard.index] = shard.call(method, *args, **kwargs)
            except (MemcacheError, ShardUnavailableError, *_CONNECTION_ERRORS) as exc:
                errors[shard.index] = exc
        return results, errors

    def flush(self, expiration: int = 0) -> StatResponse:
        """``flush_all`` on every shard (any state); per-shard errors in the response."""
        done, errors = self._everyone("flush_all", expiration, noreply=False)
        return StatResponse({i: {"flushed": str(ok)} for i, ok in done.items()}, errors)

    def stat(self, key: str | None = None) -> StatResponse:
        """``stats`` (or ``stats <key>``) of every shard."""
        args = (key,) if key else ()
        raw, errors = self._everyone("stats", *args)
        entries = {
            i: {text_of(k): text_of(v) for k, v in stats.items()} for i, stats in raw.items()
        }
        return StatResponse(entries, errors)

    def version(self) -> VersionResponse:
        raw, errors = self._everyone("version")
        return VersionResponse({i: text_of(v) for i, v in raw.items()}, errors)

    def verbosity(self, level: int) -> StatResponse:
        done, errors = self._everyone("set_verbosity", level)
        return StatResponse({i: {"verbosity": text_of(r)} for i, r in done.items()}, errors)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on the client's worker threads (batches of several shards)."""
        return self.workers.submit(fn, *args)

    def wait(self, future: Future[T], where: str, calls: int) -> T:
        """The result of work of ``calls`` server calls on ``shard``, waited for no longer
        than those calls may take by their timeouts; after that `ShardUnavailableError`."""
        limit = self.manager.time_limit(calls)
        try:
            return future.result(timeout=limit)
        except FutureTimeoutError:
            future.cancel()
            raise ShardUnavailableError(
                f"memcache shard gave no answer within {limit:g}s", shard=where
            ) from None

    @property
    def closed(self) -> bool:
        return self.workers.closed

    def close(self) -> None:
        """Stop the worker threads and close every connection; later calls raise
        `ClosedError`."""
        self.workers.close()
        self.manager.close()


def _raw_key(key: bytes | str) -> bytes:
    """A key that failed validation, as bytes for its error response."""
    return key.encode() if isinstance(key, str) else bytes(key)


def _unmapped(key: bytes) -> ValueError:
    return ValueError(f"Key {key_text(key)} does not map to any memcache shard")
