"""The record store contract, and the part of it every store shares.

`BaseRecordStore` implements the public API once (validation, encoding and encryption,
paging, waiting, filters, optimistic patches); a store implements the small set of
primitives below it, each one atomic in its own storage (a Lua script, a SQL transaction, a
lock).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from shardcache.errors import (
    InvalidRecordError,
    LeaseError,
    RecordError,
    RecordNotFound,
)
from shardcache.records.model import Encryption, Options, Record, RecordCodec, compile_filter

__all__ = ["BaseRecordStore", "Commit", "Lease", "RecordStore", "Waiter"]

_SEAL_BUDGET = 30.0  # seconds an encrypted put may lose its versions to other writers
_PATCH_ATTEMPTS = 100


@dataclass(frozen=True)
class Lease:
    """A held lease: its name, who holds it, and seconds left."""

    name: str
    holder_id: str
    expires_in: float


class Commit(NamedTuple):
    """One record to write in a put: ``rest`` is its stored form after the head (see
    `shardcache.records.model`); ``expect`` (patches only) is the version the record must
    still have (0: must not exist), else nothing in the batch is written."""

    type: str
    id: str
    rest: str
    deleted: bool
    expect: int | None = None


class Waiter(Protocol):
    def wait(self, timeout: float) -> None:
        """Return when a put may have happened, or after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class RecordStore(Protocol):
    """A versioned record store (see `BaseRecordStore` for the semantics)."""

    def put(self, records: Iterable[Record]) -> int: ...
    def get(self, record_type: str, record_id: str) -> Record: ...
    def list_types(self) -> list[str]: ...
    def sync(
        self,
        record_type: str,
        server_version: int,
        record_version: int,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Record]: ...
    def sync_latest(
        self, record_type: str, filter: Mapping[str, Any] | None = None
    ) -> tuple[int, int, Iterator[Record]]: ...
    def patch(self, records: Iterable[Record], fields: Iterable[str]) -> int: ...
    def lease(self, name: str, holder_id: str, ttl: float) -> bool: ...
    def release(self, name: str, holder_id: str) -> bool: ...
    def leases(self) -> list[Lease]: ...
    def set_options(self, record_type: str, options: Options) -> None: ...
    def get_options(self, record_type: str) -> Options: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


class BaseRecordStore(ABC):
    """The public API, written once.

    ``encryption_keys``: ``[(key_id, key), ...]`` to encrypt ``data`` at rest (AES-GCM; the
    first key encrypts, any decrypts). ``change_expiry``: seconds the change log keeps a
    change (a sync cursor older than what is kept raises `InvalidRecordVersion`).
    ``page_size``: records per round trip in `sync` and `sync_latest`. ``poll_interval``: the
    longest a waiting `sync` goes without looking, whatever notifications it gets.
    """

    def __init__(
        self,
        *,
        encryption_keys: Sequence[tuple[str, bytes]] | None = None,
        change_expiry: float = 24 * 3600,
        page_size: int = 1000,
        poll_interval: float = 1.0,
    ) -> None:
        if page_size < 1 or poll_interval <= 0 or change_expiry <= 0:
            raise InvalidRecordError("page_size, poll_interval and change_expiry must be > 0")
        self.codec = RecordCodec(Encryption(encryption_keys) if encryption_keys else None)
        self.change_expiry = change_expiry
        self.page_size = page_size
        self.poll_interval = poll_interval

    # --- writes --------------------------------------------------------------------------

    def put(self, records: Iterable[Record]) -> int:
        """Write (or, with ``deleted=True``, delete) ``records`` in one atomic step that
        numbers them ``last_version+1 ..``; return the server version."""
        wanted = list(records)
        if self.codec.encryption is None:
            commits = [
                Commit(r.type, r.id, self.codec.rest(r, deleted=r.is_deleted), r.is_deleted)
                for r in wanted
            ]
            server_version, _ = self._commit(commits)
            return server_version
        # Encrypted data is sealed with the version it will have: take the next versions,
        # and write only if no other writer took them meanwhile (else seal again).
        deadline = time.monotonic() + _SEAL_BUDGET
        while True:
            after = self._last_version()
            commits = [
                Commit(
                    r.type,
                    r.id,
                    self.codec.rest(r, deleted=r.is_deleted, version=after + 1 + i),
                    r.is_deleted,
                )
                for i, r in enumerate(wanted)
            ]
            server_version, applied = self._commit(commits, after=after)
            if applied:
                return server_version
            if time.monotonic() > deadline:
                raise RecordError(f"put gave up after {_SEAL_BUDGET:g}s of concurrent writers")

    def patch(self, records: Iterable[Record], fields: Iterable[str]) -> int:
        """Update only the top-level ``fields`` of each record's data (a field absent from
        the given data is removed), atomically: the batch is written only if no record
        changed since it was read, else read again and retried."""
        wanted = list(records)
        names = list(fields)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise InvalidRecordError("patch needs the names of the fields to update")
        for _ in range(_PATCH_ATTEMPTS):
            after = None if self.codec.encryption is None else self._last_version()
            commits: list[Commit] = []
            for record in wanted:
                if record.binary or not isinstance(record.data, Mapping):
                    raise InvalidRecordError("patch updates fields of dict data only")
                try:
                    current = self.get(record.type, record.id)
                    merged = dict(current.data)  # type: ignore[arg-type]
                    expect = current.version
                except RecordNotFound:
                    merged, expect = {}, 0
                for name in names:
                    if name in record.data:
                        merged[name] = record.data[name]
                    else:
                        merged.pop(name, None)
                version = None if after is None else after + 1 + len(commits)
                rest = self.codec.rest(Record(record.type, record.id, merged), version=version)
                commits.append(Commit(record.type, record.id, rest, False, expect))
            server_version, applied = self._commit(commits, after=after)
            if applied:
                return server_version
        raise RecordError(f"patch gave up after {_PATCH_ATTEMPTS} concurrent changes")

    def set_options(self, record_type: str, options: Options) -> None:
        """Set ``record_type``'s capacity and ttl; a smaller capacity trims at once."""
        _check_type(record_type)
        self._set_options(record_type, options.encode())
        self.maintain()

    def get_options(self, record_type: str) -> Options:
        _check_type(record_type)
        return Options.decode(self._get_options(record_type))

    # --- reads ---------------------------------------------------------------------------

    def get(self, record_type: str, record_id: str) -> Record:
        """The current record; `RecordNotFound` if there is none (or it was deleted)."""
        raw = self._get_raw(record_type, record_id)
        if raw is None:
            raise RecordNotFound(f"no record {record_type!r}/{record_id!r}")
        return self.codec.decode(raw)

    def list_types(self) -> list[str]:
        return sorted(self._types())

    def sync(
        self,
        record_type: str,
        server_version: int,
        record_version: int,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Iterator[Record]:
        """The changes to ``record_type`` after ``record_version``, in version order, read
        lazily in pages. A wrong ``server_version`` raises `InvalidServerVersion` here, at
        once; a cursor older than the change log `InvalidRecordVersion`. With ``wait`` the
        iterator then waits for new changes (for at most ``timeout`` seconds, if given)."""
        _check_type(record_type)
        self._changes(record_type, server_version, record_version, 0)  # checks the cursor
        return self._follow(record_type, server_version, record_version, wait, timeout)

    def _follow(
        self,
        record_type: str,
        server_version: int,
        cursor: int,
        wait: bool,
        timeout: float | None,
    ) -> Iterator[Record]:
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self._waiter() if wait else None
        try:
            while True:
                page = self._changes(record_type, server_version, cursor, self.page_size)
                for raw in page:
                    record = self.codec.decode(raw)
                    cursor = record.version
                    yield record
                if len(page) == self.page_size:
                    continue
                if waiter is None:
                    return
                left = self.poll_interval if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    return
                if self.maintain():  # expired records are news too
                    continue
                waiter.wait(min(self.poll_interval, left))
        finally:
            if waiter is not None:
                waiter.close()

    def sync_latest(
        self, record_type: str, filter: Mapping[str, Any] | None = None
    ) -> tuple[int, int, Iterator[Record]]:
        """``(server_version, record_version, records)``: every current record of the type
        (matching ``filter``, see `compile_filter`) exactly once, read lazily; then
        ``sync(type, server_version, record_version)`` continues from there."""
        _check_type(record_type)
        predicate = compile_filter(filter)
        self.maintain()
        server_version, last_version, ids = self._snapshot(record_type)

        def records() -> Iterator[Record]:
            for start in range(0, len(ids), self.page_size):
                for raw in self._get_many_raw(record_type, ids[start : start + self.page_size]):
                    if raw is not None:
                        record = self.codec.decode(raw)
                        if predicate(record):
                            yield record

        return server_version, last_version, records()

    # --- leases --------------------------------------------------------------------------

    def lease(self, name: str, holder_id: str, ttl: float) -> bool:
        """Take ``name`` for ``ttl`` seconds if free or expired, renew it if ``holder_id``
        holds it; False if someone else does. Atomic: at most one holder at a time."""
        _check_lease(name, holder_id)
        if not ttl > 0:
            raise LeaseError(f"a lease ttl is a number of seconds > 0, not {ttl!r}")
        return self._lease(name, holder_id, max(1, int(ttl * 1000)))

    def release(self, name: str, holder_id: str) -> bool:
        """Give ``name`` up; False if ``holder_id`` does not hold it."""
        _check_lease(name, holder_id)
        return self._release(name, holder_id)

    def leases(self) -> list[Lease]:
        return sorted(self._leases(), key=lambda lease: lease.name)

    def close(self) -> None:  # noqa: B027 - a store without connections has nothing to do
        """Release the store's connections (the data stays)."""

    # --- what a store provides -------------------------------------------------------------

    @abstractmethod
    def _commit(self, commits: Sequence[Commit], *, after: int | None = None) -> tuple[int, bool]:
        """Write ``commits`` atomically (numbering, tombstones, capacity trims, change log,
        notification); ``(server_version, applied)``: False if an ``expect`` failed, or if
        ``after`` is given and the last version is no longer ``after``."""

    @abstractmethod
    def _last_version(self) -> int:
        """The version the last write was given (0 for an empty store)."""

    @abstractmethod
    def _get_raw(self, record_type: str, record_id: str) -> str | bytes | None: ...

    @abstractmethod
    def _get_many_raw(
        self, record_type: str, record_ids: Sequence[str]
    ) -> list[str | bytes | None]: ...

    @abstractmethod
    def _types(self) -> Iterable[str]: ...

    @abstractmethod
    def _changes(
        self, record_type: str, server_version: int, after: int, limit: int
    ) -> list[str | bytes]:
        """At most ``limit`` stored changes after version ``after``, checking the cursor."""

    @abstractmethod
    def _snapshot(self, record_type: str) -> tuple[int, int, list[str]]:
        """``(server_version, last_version, ids of the current records)`` at one instant."""

    @abstractmethod
    def _set_options(self, record_type: str, encoded: str) -> None: ...

    @abstractmethod
    def _get_options(self, record_type: str) -> str | bytes | None: ...

    @abstractmethod
    def _lease(self, name: str, holder_id: str, ttl_ms: int) -> bool: ...

    @abstractmethod
    def _release(self, name: str, holder_id: str) -> bool: ...

    @abstractmethod
    def _leases(self) -> list[Lease]: ...

    @abstractmethod
    def maintain(self) -> int:
        """Apply capacities and ttls (tombstones) and drop changes older than
        ``change_expiry``; return how many records it deleted."""

    @abstractmethod
    def clear(self) -> None:
        """Empty records and change log under a new server version; leases and options stay.
        Running syncs end with `InvalidServerVersion`."""

    @abstractmethod
    def _waiter(self) -> Waiter: ...

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """``server_version``, ``last_version``, ``types`` (type -> current records),
        ``changes`` (entries in the change log) and ``oldest_change`` (its oldest version,
        None when empty)."""


def _check_type(record_type: str) -> None:
    if not isinstance(record_type, str) or not record_type:
        raise InvalidRecordError(f"a record type is a non-empty str, not {record_type!r}")


def _check_lease(name: str, holder_id: str) -> None:
    if not isinstance(name, str) or not name or not isinstance(holder_id, str) or not holder_id:
        raise LeaseError("a lease needs a non-empty name and holder id")
