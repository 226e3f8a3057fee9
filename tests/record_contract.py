"""The behaviour every record store must show (in the spirit of `cache_contract.py`).

A concrete class subclasses `RecordStoreContract` and provides ``make_store(**options)``
(a fresh, empty store; options are `BaseRecordStore`'s) and ``writer_command(count)``: a
command line for another process that puts ``count`` records of type "remote" into the same
store (``None`` where the store cannot be shared between processes).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Any

import pytest

from shardcache.records import (
    Encryption,
    InvalidRecordError,
    InvalidRecordVersion,
    InvalidServerVersion,
    LeaseError,
    Options,
    Record,
    RecordNotFound,
)
from shardcache.records.model import RecordCodec
from shardcache.testing import wait_until

KEY_A = ("a", bytes(range(32)))
KEY_B = ("b", bytes(range(32, 64)))
# With spaces: neither a stored timestamp (the write time in ms) nor base64 can hold it by
# chance, as they can hold "1234".
PIN = "my pin is 1234"


class RecordStoreContract:
    def make_store(self, **options: Any) -> Any:
        raise NotImplementedError("a concrete test class builds its store")

    def writer_command(self, count: int) -> list[str] | None:
        return None

    @pytest.fixture
    def store(self) -> Any:
        store = self.make_store()
        yield store
        store.close()

    # --- versions ------------------------------------------------------------------------

    def test_a_first_put_of_n_gets_versions_1_to_n(self, store: Any) -> None:
        server_version = store.put([Record("t", f"r{i}", {"n": i}) for i in range(5)])
        changes = list(store.sync("t", server_version, 0))
        assert [c.version for c in changes] == [1, 2, 3, 4, 5]
        assert [c.data["n"] for c in changes] == [0, 1, 2, 3, 4]
        assert store.get("t", "r3").version == 4

    def test_no_version_is_given_out_twice(self, store: Any) -> None:
        server_version = store.put([Record("t", "a"), Record("t", "b"), Record("t", "c")])
        store.put([Record("t", "d"), Record("u", "e")])
        store.put([Record("t", "a", {"again": True})])
        versions = [c.version for c in store.sync("t", server_version, 0)]
        versions += [c.version for c in store.sync("u", server_version, 0)]
        assert sorted(versions) == [1, 2, 3, 4, 5, 6]

    def test_concurrent_puts_get_unique_gap_free_versions(self, store: Any) -> None:
        errors: list[BaseException] = []

        def writer(thread: int) -> None:
            try:
                for i in range(500):
                    store.put([Record("c", f"{thread}-{i}", {"i": i})])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [repr(e) for e in errors[:3]] == []
        server_version, last, _ = store.sync_latest("c")
        versions = [c.version for c in store.sync("c", server_version, 0)]
        assert versions == list(range(1, 4001))
        assert last == 4000

    # --- records, tombstones, types ------------------------------------------------------

    def test_get_put_and_tombstones(self, store: Any) -> None:
        with pytest.raises(RecordNotFound):
            store.get("t", "missing")
        server_version = store.put([Record("t", "x", {"name": "ünï", "list": [], "obj": {}})])
        record = store.get("t", "x")
        assert record.data == {"name": "ünï", "list": [], "obj": {}}
        assert record.modified_at is not None
        assert record.deleted_at is None
        store.put([Record("t", "x", deleted=True)])
        with pytest.raises(RecordNotFound):
            store.get("t", "x")
        changes = list(store.sync("t", server_version, 0))
        assert [c.version for c in changes] == [1, 2]
        assert changes[1].deleted_at is not None
        assert changes[1].is_deleted
        _, _, current = store.sync_latest("t")
        assert list(current) == []
        assert store.list_types() == ["t"]

    def test_binary_data_needs_the_flag(self, store: Any) -> None:
        with pytest.raises(InvalidRecordError):
            Record("t", "b", b"\x00\x01")  # type: ignore[arg-type]
        store.put([Record("t", "b", b"\x00\xff", binary=True)])
        assert store.get("t", "b").data == b"\x00\xff"
        with pytest.raises(InvalidRecordError):
            store.put([Record("t", "bad", {"when": object()})])

    # --- sync --------------------------------------------------------------------------------

    def test_sync_checks_its_cursor_at_once(self, store: Any) -> None:
        server_version = store.put([Record("t", "a")])
        with pytest.raises(InvalidServerVersion):
            store.sync("t", server_version + 1, 0)  # raises before any iteration
        assert [c.id for c in store.sync("t", server_version, 1)] == []

    def test_sync_streams_in_pages(self) -> None:
        store = self.make_store(page_size=7)
        server_version = 0
        for start in range(0, 100, 25):
            server_version = store.put([Record("p", f"{start + i}") for i in range(25)])
        versions = [c.version for c in store.sync("p", server_version, 10)]
        assert versions == list(range(11, 101))
        store.close()

    def test_a_waiting_sync_sees_new_puts_in_order(self, store: Any) -> None:
        server_version, version, _ = store.sync_latest("w")
        seen: list[int] = []

        def follow() -> None:
            for change in store.sync("w", server_version, version, wait=True, timeout=30):
                seen.append(int(change.id))
                if len(seen) == 20:
                    return

        follower = threading.Thread(target=follow)
        follower.start()
        for i in range(20):
            store.put([Record("w", str(i))])
        follower.join(timeout=60)
        assert seen == list(range(20))

    def test_a_waiting_sync_sees_another_process(self, store: Any) -> None:
        command = self.writer_command(50)
        if command is None:
            pytest.skip("this store lives in one process")
        server_version, version, _ = store.sync_latest("remote")
        writer = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.getcwd()})
        seen = []
        for change in store.sync("remote", server_version, version, wait=True, timeout=60):
            seen.append(change)
            if len(seen) == 50:
                break
        assert writer.wait(timeout=60) == 0
        assert [c.data["i"] for c in seen] == list(range(50))
        assert [c.version for c in seen] == sorted(c.version for c in seen)

    def test_sync_latest_gives_each_record_once_while_writers_write(self, store: Any) -> None:
        store.put([Record("l", f"r{i}", {"round": 0}) for i in range(300)])
        stop = threading.Event()

        def rewrite() -> None:
            round_ = 0
            while not stop.is_set():
                round_ += 1
                store.put([Record("l", f"r{i}", {"round": round_}) for i in range(0, 300, 7)])

        writer = threading.Thread(target=rewrite)
        writer.start()
        try:
            for _ in range(3):
                _, _, current = store.sync_latest("l")
                ids = [r.id for r in current]
                assert sorted(ids) == sorted(f"r{i}" for i in range(300))
        finally:
            stop.set()
            writer.join()

    def test_sync_latest_filters(self, store: Any) -> None:
        store.put(
            [
                Record("f", "1", {"color": "red", "size": 1}),
                Record("f", "2", {"color": "blue", "size": 2}),
                Record("f", "3", {"color": "red", "size": 3}),
                Record("f", "4", {"size": 4}),
            ]
        )

        def ids(spec: Any) -> list[str]:
            return sorted(r.id for r in store.sync_latest("f", spec)[2])

        assert ids({"id": "2"}) == ["2"]
        assert ids({"color": "red"}) == ["1", "3"]
        assert ids({"color": {"$eq": "blue"}}) == ["2"]
        assert ids({"size": {"$in": [1, 4]}}) == ["1", "4"]
        assert ids({"$or": [{"id": "4"}, {"color": "blue"}]}) == ["2", "4"]
        assert ids({"$and": [{"color": "red"}, {"size": {"$in": [3]}}]}) == ["3"]
        with pytest.raises(InvalidRecordError):
            store.sync_latest("f", {"size": {"$gt": 1}})

    # --- patch ---------------------------------------------------------------------------

    def test_concurrent_patches_to_different_fields_both_survive(self, store: Any) -> None:
        store.put([Record("p", "doc", {"a": 0, "b": 0, "keep": "me"})])

        def patcher(field: str) -> None:
            for i in range(1, 41):
                store.patch([Record("p", "doc", {field: i})], [field])

        threads = [threading.Thread(target=patcher, args=(f,)) for f in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.get("p", "doc").data == {"a": 40, "b": 40, "keep": "me"}
        store.patch([Record("p", "doc", {})], ["keep"])  # a field left out is removed
        assert store.get("p", "doc").data == {"a": 40, "b": 40}

    # --- leases --------------------------------------------------------------------------

    def test_lease_acquire_renew_release(self, store: Any) -> None:
        assert store.lease("job", "me", 10) is True
        assert store.lease("job", "you", 10) is False
        assert store.lease("job", "me", 20) is True  # renewed
        [held] = store.leases()
        assert (held.name, held.holder_id) == ("job", "me")
        assert 15 < held.expires_in <= 20
        assert store.release("job", "you") is False
        assert store.release("job", "me") is True
        assert store.leases() == []
        with pytest.raises(LeaseError):
            store.lease("job", "", 10)
        with pytest.raises(LeaseError):
            store.lease("job", "me", 0)

    def test_an_expired_lease_can_be_taken(self, store: Any) -> None:
        assert store.lease("short", "me", 0.2)
        wait_until(lambda: store.lease("short", "you", 10), timeout=10, what="expiry")
        assert store.release("short", "me") is False

    def test_leases_exclude_each_other_under_contention(self, store: Any) -> None:
        holders: list[str] = []
        overlaps: list[tuple[str, str]] = []
        guard = threading.Lock()
        stop = time.monotonic() + 2

        def contender(name: str) -> None:
            turns = 0
            while time.monotonic() < stop or turns == 0:
                if not store.lease("mutex", name, 30):
                    continue
                with guard:  # the independent check: who else holds it now?
                    if holders:
                        overlaps.append((holders[0], name))
                    holders.append(name)
                time.sleep(0.001)
                with guard:
                    holders.remove(name)
                assert store.release("mutex", name)
                turns += 1

        threads = [threading.Thread(target=contender, args=(f"c{i}",)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert overlaps == []

    # --- options -------------------------------------------------------------------------

    def test_capacity_trims_the_oldest_by_version(self, store: Any) -> None:
        assert store.get_options("cap") == Options()
        ids = ["m", "z", "a", "q", "b"]  # they sort unlike their versions
        server_version = 0
        for record_id in ids:
            server_version = store.put([Record("cap", record_id)])
        store.set_options("cap", Options(capacity=3))
        assert store.get_options("cap") == Options(capacity=3)
        assert sorted(r.id for r in store.sync_latest("cap")[2]) == ["a", "b", "q"]
        tombs = list(store.sync("cap", server_version, 5))
        assert [(c.id, c.is_deleted) for c in tombs] == [("m", True), ("z", True)]
        store.put([Record("cap", "m")])  # a new one pushes out the oldest: "a"
        assert sorted(r.id for r in store.sync_latest("cap")[2]) == ["b", "m", "q"]

    def test_ttl_expiry_is_a_tombstone_a_waiting_sync_receives(self, store: Any) -> None:
        store.set_options("ttl", Options(ttl=0.5))
        server_version, version, _ = store.sync_latest("ttl")
        store.put([Record("ttl", "soon")])
        got = []
        for change in store.sync("ttl", server_version, version, wait=True, timeout=30):
            got.append((change.id, change.is_deleted))
            if len(got) == 2:
                break
        assert got == [("soon", False), ("soon", True)]
        with pytest.raises(RecordNotFound):
            store.get("ttl", "soon")

    def test_change_log_retention_then_an_old_cursor_raises(self) -> None:
        store = self.make_store(change_expiry=0.3)
        server_version = store.put([Record("old", "a")])
        wait_until(
            lambda: store.maintain() >= 0 and _trimmed(store, server_version),
            timeout=10,
            what="the change to leave the log",
        )
        with pytest.raises(InvalidRecordVersion):
            list(store.sync("old", server_version, 0))
        _, version, current = store.sync_latest("old")
        assert [r.id for r in current] == ["a"]  # the record itself stays
        assert list(store.sync("old", server_version, version)) == []
        store.close()

    # --- clear ---------------------------------------------------------------------------

    def test_clear_keeps_leases_and_ends_running_syncs(self, store: Any) -> None:
        server_version = store.put([Record("t", "a")])
        store.lease("kept", "me", 30)
        store.set_options("t", Options(capacity=10))
        outcome: list[BaseException] = []

        def follow() -> None:
            try:
                for _ in store.sync("t", server_version, 1, wait=True, timeout=30):
                    pass
            except InvalidServerVersion as exc:
                outcome.append(exc)

        follower = threading.Thread(target=follow)
        follower.start()
        store.clear()  # before or while the follower waits: either way it must end
        follower.join(timeout=60)
        assert len(outcome) == 1
        assert store.list_types() == []
        with pytest.raises(RecordNotFound):
            store.get("t", "a")
        assert [lease.name for lease in store.leases()] == ["kept"]
        assert store.get_options("t") == Options(capacity=10)
        new_version = store.put([Record("t", "b")])
        assert new_version != server_version
        assert [c.version for c in store.sync("t", new_version, 0)] == [1]

    # --- encryption ----------------------------------------------------------------------

    def test_encryption_round_trip_and_rotation(self) -> None:
        store = self.make_store(encryption_keys=[KEY_A])
        server_version = store.put([Record("secret", "s1", {"pin": PIN})])
        raw = _stored_text(store, "secret", "s1")
        assert PIN not in raw
        assert '"t":"secret"' in raw  # type, id and version stay readable
        assert store.get("secret", "s1").data == {"pin": PIN}
        old_keys = store.codec
        store.codec = RecordCodec(Encryption([KEY_B, KEY_A]))  # rotate: B first, A still read
        store.put([Record("secret", "s2", {"pin": "5678"})])
        assert store.get("secret", "s1").data == {"pin": PIN}
        assert [c.data for c in store.sync("secret", server_version, 0)] == [
            {"pin": PIN},
            {"pin": "5678"},
        ]
        store.codec = old_keys
        with pytest.raises(InvalidRecordError):
            store.get("secret", "s2")  # written with a key the old configuration lacks
        store.close()

    def test_encrypted_puts_from_many_threads_seal_the_versions_they_get(self) -> None:
        store = self.make_store(encryption_keys=[KEY_A])

        def write(n: int) -> None:
            for i in range(40):
                store.put([Record("secret", f"w{n}-{i}", {"n": n, "i": i})])

        threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        _, last, current = store.sync_latest("secret")
        records = list(current)
        assert last == 160
        assert sorted(r.version for r in records) == list(range(1, 161))
        assert all(r.data == {"n": int(r.id[1]), "i": int(r.id.split("-")[1])} for r in records)
        store.close()


def _trimmed(store: Any, server_version: int) -> bool:
    try:
        list(store.sync("old", server_version, 0))
    except InvalidRecordVersion:
        return True
    return False


def _stored_text(store: Any, record_type: str, record_id: str) -> str:
    raw = store._get_raw(record_type, record_id)
    return raw.decode() if isinstance(raw, bytes) else str(raw)
