"""`OrmRecordStore`: the record store in the project's database, through the Django ORM.

Writers take turns on the store's `StoreState` row: ``select_for_update`` on PostgreSQL and
the like; on SQLite (which ignores it) a first no-op UPDATE of that row takes the database's
write lock at the start of the transaction, so two writers never read the same
``last_version``. A waiting sync polls (``poll_interval``, 0.1 s by default).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Max

from shardcache.errors import InvalidRecordVersion, InvalidServerVersion
from shardcache.records.base import BaseRecordStore, Commit, Lease
from shardcache.records.memory import new_server_version, now_ms
from shardcache.records.model import Options, Record, head
from shardcache_django.records.models import (
    Change,
    CurrentRecord,
    StoreState,
    TypeOptions,
)
from shardcache_django.records.models import (
    Lease as LeaseRow,
)

__all__ = ["OrmRecordStore"]


class OrmRecordStore(BaseRecordStore):
    """The store on database ``using``; ``namespace`` separates stores sharing the tables."""

    def __init__(
        self, *, using: str = "default", namespace: str = "default", **options: Any
    ) -> None:
        options.setdefault("poll_interval", 0.1)
        super().__init__(**options)
        self.using = using
        self.namespace = namespace

    def __repr__(self) -> str:
        return f"<OrmRecordStore {self.namespace!r} on database {self.using!r}>"

    # --- the state row --------------------------------------------------------------------

    def _state(self) -> StoreState:
        try:
            return StoreState.objects.using(self.using).get(namespace=self.namespace)
        except StoreState.DoesNotExist:
            try:
                with transaction.atomic(using=self.using):
                    return StoreState.objects.using(self.using).create(
                        namespace=self.namespace, server_version=new_server_version()
                    )
            except IntegrityError:  # another writer created it first
                return StoreState.objects.using(self.using).get(namespace=self.namespace)

    def _locked_state(self) -> StoreState:
        """The state row, locked until the end of the current transaction. The first
        statement writes: on SQLite a transaction that reads first and writes later can
        deadlock with another writer ("database is locked", without waiting)."""
        rows = StoreState.objects.using(self.using).filter(namespace=self.namespace)
        if not rows.update(last_version=F("last_version")):
            try:
                with transaction.atomic(using=self.using):
                    StoreState.objects.using(self.using).create(
                        namespace=self.namespace, server_version=new_server_version()
                    )
            except IntegrityError:  # another writer created it first
                rows.update(last_version=F("last_version"))
        return rows.select_for_update().get()

    def _rows(self, model: Any) -> Any:
        return model.objects.using(self.using).filter(namespace=self.namespace)

    # --- writes ----------------------------------------------------------------------------

    def _write(
        self, state: StoreState, items: Sequence[tuple[str, str, str, bool]], ms: int
    ) -> None:
        """Number and write ``(type, id, rest, deleted)`` items: a few statements per
        batch (bulk inserts), not a few per record."""
        changes, latest = [], {}
        for record_type, record_id, rest, deleted in items:
            state.last_version += 1
            stored = head(state.last_version, ms) + rest
            changes.append(
                Change(
                    namespace=self.namespace,
                    type=record_type,
                    version=state.last_version,
                    modified_ms=ms,
                    stored=stored,
                )
            )
            latest[(record_type, record_id)] = (state.last_version, stored, deleted)
        by_type: dict[str, list[str]] = {}
        for record_type, record_id in latest:
            by_type.setdefault(record_type, []).append(record_id)
        for record_type, record_ids in by_type.items():
            for start in range(0, len(record_ids), 500):  # SQLite's limit on parameters
                chunk = record_ids[start : start + 500]
                self._rows(CurrentRecord).filter(type=record_type, record_id__in=chunk).delete()
        CurrentRecord.objects.using(self.using).bulk_create(
            [
                CurrentRecord(
                    namespace=self.namespace,
                    type=record_type,
                    record_id=record_id,
                    version=version,
                    modified_ms=ms,
                    stored=stored,
                )
                for (record_type, record_id), (version, stored, deleted) in latest.items()
                if not deleted
            ],
            batch_size=500,
        )
        Change.objects.using(self.using).bulk_create(changes, batch_size=500)

    def _trim(self, state: StoreState, record_type: str, options: Options, ms: int) -> int:
        current = self._rows(CurrentRecord).filter(type=record_type).order_by("version")
        doomed: list[str] = []
        if options.capacity is not None:
            excess = current.count() - options.capacity
            if excess > 0:
                doomed += current.values_list("record_id", flat=True)[:excess]
        if options.ttl is not None:
            expired = current.filter(modified_ms__lt=ms - options.ttl * 1000)
            doomed += [i for i in expired.values_list("record_id", flat=True) if i not in doomed]
        tomb = self.codec.rest
        items = [(record_type, i, tomb(Record(record_type, i), deleted=True), True) for i in doomed]
        self._write(state, items, ms)
        return len(doomed)

    def _commit(self, commits: Sequence[Commit], *, after: int | None = None) -> tuple[int, bool]:
        with transaction.atomic(using=self.using):
            state = self._locked_state()
            if after is not None and state.last_version != after:
                return state.server_version, False
            for c in commits:
                if c.expect is not None:
                    found = self._rows(CurrentRecord).filter(type=c.type, record_id=c.id)
                    version = found.values_list("version", flat=True).first()
                    if (version or 0) != c.expect:
                        return state.server_version, False
            ms = now_ms()
            self._write(state, [(c.type, c.id, c.rest, c.deleted) for c in commits], ms)
            for record_type in {c.type for c in commits}:
                capacity = Options(capacity=self._options_of(record_type).capacity)
                self._trim(state, record_type, capacity, ms)
            state.save(using=self.using, update_fields=["last_version"])
            return state.server_version, True

    def _last_version(self) -> int:
        return int(self._state().last_version)

    def _options_of(self, record_type: str) -> Options:
        return Options.decode(self._get_options(record_type))

    def maintain(self) -> int:
        ms = now_ms()
        cutoff = int(ms - self.change_expiry * 1000)
        typed = list(self._rows(TypeOptions).values_list("type", "encoded"))
        if not typed and not self._rows(Change).filter(modified_ms__lt=cutoff).exists():
            return 0  # nothing to do: do not take the write lock
        with transaction.atomic(using=self.using):
            state = self._locked_state()
            removed = 0
            for record_type, encoded in typed:
                removed += self._trim(state, record_type, Options.decode(encoded), ms)
            old = self._rows(Change).filter(modified_ms__lt=cutoff)
            newest_dropped = old.aggregate(top=Max("version"))["top"]
            if newest_dropped is not None:
                old.delete()
                # Only ever up: with writers' clocks apart, a later sweep may drop changes
                # older by version than an earlier sweep did.
                state.trimmed = max(state.trimmed, newest_dropped)
            state.save(using=self.using, update_fields=["last_version", "trimmed"])
            return removed

    def _set_options(self, record_type: str, encoded: str) -> None:
        rows = self._rows(TypeOptions).filter(type=record_type)
        if not rows.update(encoded=encoded):
            try:
                with transaction.atomic(using=self.using):
                    TypeOptions.objects.using(self.using).create(
                        namespace=self.namespace, type=record_type, encoded=encoded
                    )
            except IntegrityError:
                rows.update(encoded=encoded)

    def _get_options(self, record_type: str) -> str | None:
        found: str | None = (
            self._rows(TypeOptions)
            .filter(type=record_type)
            .values_list("encoded", flat=True)
            .first()
        )
        return found

    def clear(self) -> None:
        with transaction.atomic(using=self.using):
            state = self._locked_state()
            self._rows(CurrentRecord).delete()
            self._rows(Change).delete()
            state.server_version = new_server_version()
            state.last_version = state.trimmed = 0
            state.save(using=self.using)

    # --- reads -----------------------------------------------------------------------------

    def _get_raw(self, record_type: str, record_id: str) -> str | None:
        found = self._rows(CurrentRecord).filter(type=record_type, record_id=record_id)
        stored: str | None = found.values_list("stored", flat=True).first()
        return stored

    def _get_many_raw(
        self, record_type: str, record_ids: Sequence[str]
    ) -> list[str | bytes | None]:
        found = dict(
            self._rows(CurrentRecord)
            .filter(type=record_type, record_id__in=list(record_ids))
            .values_list("record_id", "stored")
        )
        return [found.get(i) for i in record_ids]

    def _types(self) -> Iterable[str]:
        changed = self._rows(Change).values_list("type", flat=True).distinct()
        current = self._rows(CurrentRecord).values_list("type", flat=True).distinct()
        return set(changed) | set(current)

    def _changes(
        self, record_type: str, server_version: int, after: int, limit: int
    ) -> list[str | bytes]:
        self._check_cursor(server_version, after)
        if limit == 0:
            return []
        self._after_cursor_check()
        rows = self._rows(Change).filter(type=record_type, version__gt=after).order_by("version")
        found = list(rows.values_list("stored", flat=True)[:limit])
        # The check and the rows are two statements: a maintain() or clear() committed in
        # between would leave a gap, or hand out the next server version's changes. Checked
        # again after the read, such a change is an error instead.
        self._check_cursor(server_version, after)
        return found

    def _check_cursor(self, server_version: int, after: int) -> None:
        state = self._state()
        if state.server_version != server_version:
            raise InvalidServerVersion(
                f"server version {server_version} is gone (now {state.server_version})"
            )
        if after < state.trimmed:
            raise InvalidRecordVersion(
                f"changes after {after} were dropped from the log (kept from "
                f"{state.trimmed + 1}): sync_latest again"
            )

    def _after_cursor_check(self) -> None:
        """Nothing: a seam where the tests commit a maintain() or clear() of their own."""

    def _snapshot(self, record_type: str) -> tuple[int, int, list[str]]:
        with transaction.atomic(using=self.using):
            state = self._locked_state()  # no writer in between: one instant
            current = self._rows(CurrentRecord).filter(type=record_type).order_by("version")
            return (
                state.server_version,
                state.last_version,
                list(current.values_list("record_id", flat=True)),
            )

    # --- leases ----------------------------------------------------------------------------

    def _lease(self, name: str, holder_id: str, ttl_ms: int) -> bool:
        with transaction.atomic(using=self.using):
            self._locked_state()  # leases take turns with everything else
            row = self._rows(LeaseRow).filter(name=name).first()
            ms = now_ms()
            if row is not None and row.holder_id != holder_id and row.expires_ms > ms:
                return False
            if row is None:
                row = LeaseRow(namespace=self.namespace, name=name)
            row.holder_id, row.expires_ms = holder_id, ms + ttl_ms
            row.save(using=self.using)
            return True

    def _release(self, name: str, holder_id: str) -> bool:
        held = self._rows(LeaseRow).filter(name=name, holder_id=holder_id, expires_ms__gt=now_ms())
        deleted, _ = held.delete()
        return deleted > 0

    def _leases(self) -> list[Lease]:
        ms = now_ms()
        rows = self._rows(LeaseRow).filter(expires_ms__gt=ms)
        return [Lease(r.name, r.holder_id, (r.expires_ms - ms) / 1000) for r in rows]

    def _waiter(self) -> _PollingWaiter:
        return _PollingWaiter(self)

    def stats(self) -> dict[str, Any]:
        state = self._state()
        counts: dict[str, int] = {}
        for record_type in self._types():
            counts[record_type] = self._rows(CurrentRecord).filter(type=record_type).count()
        changes = self._rows(Change)
        oldest = changes.order_by("version").values_list("version", flat=True).first()
        return {
            "server_version": state.server_version,
            "last_version": state.last_version,
            "types": counts,
            "changes": changes.count(),
            "oldest_change": oldest,
            "trimmed": state.trimmed,  # a cursor below this must sync_latest again
        }


class _PollingWaiter:
    """Returns as soon as the store's versions move (checked every 50 ms), or at timeout."""

    def __init__(self, store: OrmRecordStore) -> None:
        self.store = store
        self.seen = self._now()

    def _now(self) -> tuple[int, int]:
        state = self.store._state()
        return state.server_version, state.last_version

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._now()
            if now != self.seen:
                self.seen = now
                return
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        pass
