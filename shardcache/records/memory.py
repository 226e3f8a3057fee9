"""`MemoryRecordStore`: the record store in this process (tests, development, one worker)."""

from __future__ import annotations

import bisect
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from shardcache.errors import InvalidRecordVersion, InvalidServerVersion
from shardcache.records.base import BaseRecordStore, Commit, Lease
from shardcache.records.model import Options, Record, head

__all__ = ["MemoryRecordStore"]


def new_server_version() -> int:
    return secrets.randbits(62) + 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryRecordStore(BaseRecordStore):
    """Every primitive under one lock; a condition wakes waiting syncs."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._cond = threading.Condition()
        self._options: dict[str, str] = {}
        self._held: dict[str, tuple[str, float]] = {}  # name -> (holder, monotonic deadline)
        self._reset()

    def _reset(self) -> None:
        self._server_version = new_server_version()
        self._last = 0
        # type -> id -> (version, ms, stored); dicts keep insertion order, and a rewritten
        # record is re-inserted, so each is in version order: the oldest first.
        self._current: dict[str, dict[str, tuple[int, int, str]]] = {}
        self._change_log: dict[str, tuple[list[int], list[str]]] = {}
        self._log: deque[tuple[int, int, str]] = deque()  # (version, ms, type)
        self._trimmed = 0

    # --- writes (under the lock) ----------------------------------------------------------

    def _write(self, record_type: str, record_id: str, rest: str, deleted: bool, ms: int) -> None:
        self._last += 1
        stored = head(self._last, ms) + rest
        current = self._current.setdefault(record_type, {})
        current.pop(record_id, None)
        if not deleted:
            current[record_id] = (self._last, ms, stored)
        versions, blobs = self._change_log.setdefault(record_type, ([], []))
        versions.append(self._last)
        blobs.append(stored)
        self._log.append((self._last, ms, record_type))

    def _delete_oldest(self, record_type: str, ms: int) -> None:
        oldest = next(iter(self._current[record_type]))
        tomb = self.codec.rest(Record(record_type, oldest), deleted=True)
        self._write(record_type, oldest, tomb, True, ms)

    def _commit(self, commits: Sequence[Commit], *, after: int | None = None) -> tuple[int, bool]:
        with self._cond:
            if after is not None and after != self._last:
                return self._server_version, False
            for c in commits:
                if c.expect is not None:
                    found = self._current.get(c.type, {}).get(c.id)
                    if (found[0] if found else 0) != c.expect:
                        return self._server_version, False
            ms = now_ms()
            for c in commits:
                self._write(c.type, c.id, c.rest, c.deleted, ms)
            for record_type in {c.type for c in commits}:
                self._trim(record_type, ms)
            self._cond.notify_all()
            return self._server_version, True

    def _last_version(self) -> int:
        with self._cond:
            return self._last

    def _trim(self, record_type: str, ms: int) -> int:
        capacity = Options.decode(self._options.get(record_type)).capacity
        current = self._current.get(record_type, {})
        removed = 0
        while capacity is not None and len(current) > capacity:
            self._delete_oldest(record_type, ms)
            removed += 1
        return removed

    def maintain(self) -> int:
        with self._cond:
            ms = now_ms()
            removed = 0
            for record_type, encoded in self._options.items():
                removed += self._trim(record_type, ms)
                ttl = Options.decode(encoded).ttl
                current = self._current.get(record_type, {})
                while ttl is not None and current:
                    if next(iter(current.values()))[1] >= ms - ttl * 1000:
                        break
                    self._delete_oldest(record_type, ms)
                    removed += 1
            cutoff = ms - self.change_expiry * 1000
            while self._log and self._log[0][1] < cutoff:
                version, _, record_type = self._log.popleft()
                versions, blobs = self._change_log[record_type]
                del versions[0], blobs[0]  # a type's oldest change is the log's oldest
                self._trimmed = version
            if removed:
                self._cond.notify_all()
            return removed

    def _set_options(self, record_type: str, encoded: str) -> None:
        with self._cond:
            self._options[record_type] = encoded

    def _get_options(self, record_type: str) -> str | None:
        with self._cond:
            return self._options.get(record_type)

    def clear(self) -> None:
        with self._cond:
            self._reset()
            self._cond.notify_all()

    # --- reads -----------------------------------------------------------------------------

    def _get_raw(self, record_type: str, record_id: str) -> str | None:
        with self._cond:
            found = self._current.get(record_type, {}).get(record_id)
            return found[2] if found else None

    def _get_many_raw(
        self, record_type: str, record_ids: Sequence[str]
    ) -> list[str | bytes | None]:
        with self._cond:
            current = self._current.get(record_type, {})
            return [current[i][2] if i in current else None for i in record_ids]

    def _types(self) -> Iterable[str]:
        with self._cond:
            return list(self._change_log)

    def _changes(
        self, record_type: str, server_version: int, after: int, limit: int
    ) -> list[str | bytes]:
        with self._cond:
            if server_version != self._server_version:
                raise InvalidServerVersion(
                    f"server version {server_version} is gone (now {self._server_version})"
                )
            if after < self._trimmed:
                raise InvalidRecordVersion(
                    f"changes after {after} were dropped from the log (kept from "
                    f"{self._trimmed + 1}): sync_latest again"
                )
            versions, blobs = self._change_log.get(record_type, ([], []))
            start = bisect.bisect_right(versions, after)
            return list(blobs[start : start + limit])

    def _snapshot(self, record_type: str) -> tuple[int, int, list[str]]:
        with self._cond:
            return self._server_version, self._last, list(self._current.get(record_type, {}))

    # --- leases ----------------------------------------------------------------------------

    def _lease(self, name: str, holder_id: str, ttl_ms: int) -> bool:
        with self._cond:
            now = time.monotonic()
            held = self._held.get(name)
            if held is not None and held[0] != holder_id and held[1] > now:
                return False
            self._held[name] = (holder_id, now + ttl_ms / 1000)
            return True

    def _release(self, name: str, holder_id: str) -> bool:
        with self._cond:
            held = self._held.get(name)
            if held is None or held[0] != holder_id or held[1] <= time.monotonic():
                return False
            del self._held[name]
            return True

    def _leases(self) -> list[Lease]:
        with self._cond:
            now = time.monotonic()
            return [Lease(n, h, round(d - now, 3)) for n, (h, d) in self._held.items() if d > now]

    def _waiter(self) -> _Waiter:
        return _Waiter(self)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "server_version": self._server_version,
                "last_version": self._last,
                "types": {t: len(self._current.get(t, {})) for t in self._change_log},
                "changes": len(self._log),
                "oldest_change": self._log[0][0] if self._log else None,
            }


class _Waiter:
    def __init__(self, store: MemoryRecordStore) -> None:
        self.store = store
        self.seen = (store._server_version, store._last)

    def wait(self, timeout: float) -> None:
        store = self.store
        with store._cond:
            store._cond.wait_for(
                lambda: (store._server_version, store._last) != self.seen, timeout=timeout
            )
            self.seen = (store._server_version, store._last)

    def close(self) -> None:
        pass
