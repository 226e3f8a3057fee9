"""The behaviour every `Cache` must show, whatever the topology under it.

A concrete test class subclasses `CacheContract` and provides two fixtures: ``cache`` (a
`Cache` with the prefix ``"t:"`` on real servers, emptied first) and ``raw`` (a function
``raw(key) -> redis.Redis`` giving a plain client on the server holding ``key``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import pickle
import threading
import time
import tracemalloc
import weakref
import zlib
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
import redis

from shardcache import (
    Cache,
    ClosedError,
    InvalidKeyError,
    LockError,
    LockNotOwnedError,
    MissingKeyError,
    NotAnIntegerError,
)
from shardcache.errors import ConfigurationError, SerializationError
from tests.process import open_sockets, our_threads, settles

RawClient = Callable[[bytes], redis.Redis]
SECRET = "0123456789abcdef: integrity"

VALUES: list[Any] = [
    "text",
    "ünïcødé",
    b"\x00\xffbytes",
    1.5,
    None,
    True,
    [1, "two", 3.0],
    {"nested": {"list": [1, 2]}},
    date(2026, 11, 27),
    "x" * 100_000,
]


class CacheContract:
    # What the topology can do; where it cannot, the contract checks the documented refusal.
    clear_by_prefix = True
    locks = True

    @pytest.fixture(autouse=True)
    def _held_before(self) -> None:
        # Taken before the cache fixture builds its topology (autouse fixtures come first).
        self.sockets_before = open_sockets()
        self.threads_before = our_threads()

    @pytest.fixture
    def cache(self) -> Cache:
        raise NotImplementedError("a concrete test class provides the cache fixture")

    @pytest.fixture
    def raw(self) -> RawClient:
        raise NotImplementedError("a concrete test class provides the raw fixture")

    # --- get / set / add / delete -----------------------------------------------------------

    @pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
    def test_set_then_get_returns_an_equal_value(self, cache: Cache, value: Any) -> None:
        assert cache.set("k", value) is True
        assert cache.get("k") == value

    def test_get_missing_returns_default(self, cache: Cache) -> None:
        assert cache.get("missing") is None
        assert cache.get("missing", "fallback") == "fallback"

    def test_str_and_bytes_keys_are_the_same_key(self, cache: Cache) -> None:
        cache.set("ключ", 1)
        assert cache.get("ключ".encode()) == 1

    def test_keys_are_stored_under_the_prefix(self, cache: Cache, raw: RawClient) -> None:
        cache.set("k", "v")
        assert raw(b"t:k").exists(b"t:k") == 1
        assert raw(b"k").exists(b"k") == 0

    def test_integers_are_plain_on_the_server(self, cache: Cache, raw: RawClient) -> None:
        cache.set("n", 41)
        if cache.codec.signed:  # signed like any value: nobody else can count for us
            assert raw(b"t:n").get(b"t:n") != b"41"
            assert cache.incr("n") == 42
        else:
            assert raw(b"t:n").get(b"t:n") == b"41"
            assert raw(b"t:n").incr(b"t:n") == 42
        assert cache.get("n") == 42

    def test_set_with_ttl_expires(self, cache: Cache) -> None:
        cache.set("k", "v", ttl=0.2)
        assert cache.get("k") == "v"
        deadline = time.monotonic() + 10
        while cache.get("k") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cache.get("k") is None

    def test_set_with_ttl_zero_or_less_removes_the_key(self, cache: Cache) -> None:
        cache.set("k", "v")
        assert cache.set("k", "new", ttl=0) is True
        assert cache.has("k") is False

    def test_add_only_stores_when_absent(self, cache: Cache) -> None:
        assert cache.add("k", "first") is True
        assert cache.add("k", "second") is False
        assert cache.get("k") == "first"
        assert cache.add("t", "v", ttl=5) is True
        assert 0 < (cache.ttl("t") or 0) <= 5

    def test_add_with_ttl_zero_keeps_nothing(self, cache: Cache) -> None:
        assert cache.add("k", "v", ttl=0) is True
        assert cache.has("k") is False

    def test_add_is_atomic_under_concurrency(self, cache: Cache) -> None:
        winners = []

        def contend(i: int) -> None:
            if cache.add("lock", i):
                winners.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(winners) == 1

    def test_delete_reports_whether_the_key_existed(self, cache: Cache) -> None:
        cache.set("k", "v")
        assert cache.delete("k") is True
        assert cache.delete("k") is False
        assert cache.get("k") is None

    def test_has(self, cache: Cache) -> None:
        assert cache.has("k") is False
        cache.set("k", None)  # a stored None is still a key
        assert cache.has("k") is True

    def test_bad_keys_are_typed_errors(self, cache: Cache) -> None:
        with pytest.raises(InvalidKeyError, match="str or bytes"):
            cache.get(42)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError, match="empty"):
            cache.set("", "v")

    # --- counters ----------------------------------------------------------------------------

    def test_incr_and_decr_are_atomic_on_the_server(self, cache: Cache) -> None:
        cache.set("n", 0)

        def bump() -> None:
            for _ in range(100):
                cache.incr("n")

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert cache.get("n") == 400
        assert cache.incr("n", 10) == 410
        assert cache.decr("n", 20) == 390
        assert cache.decr("n") == 389

    def test_incr_of_a_missing_key_raises_and_creates_nothing(self, cache: Cache) -> None:
        with pytest.raises(MissingKeyError, match="not found"):
            cache.incr("missing")
        with pytest.raises(ValueError, match="not found"):  # as Django's backends do
            cache.decr("missing")
        assert cache.has("missing") is False

    def test_incr_of_a_non_integer_is_a_type_error(self, cache: Cache) -> None:
        cache.set("s", "text")
        with pytest.raises(NotAnIntegerError, match="not hold an integer"):
            cache.incr("s")
        with pytest.raises(TypeError):  # as Django expects
            cache.decr("s")
        assert cache.get("s") == "text"

    def test_incr_keeps_the_ttl(self, cache: Cache) -> None:
        cache.set("n", 1, ttl=60)
        cache.incr("n")
        assert 0 < (cache.ttl("n") or 0) <= 60

    # --- expiry ------------------------------------------------------------------------------

    def test_ttl_reports_seconds_none_or_zero(self, cache: Cache) -> None:
        assert cache.ttl("missing") == 0.0
        cache.set("forever", 1)
        assert cache.ttl("forever") is None
        cache.set("soon", 1, ttl=30)
        assert 29 < (cache.ttl("soon") or 0) <= 30

    def test_touch_expire_and_persist(self, cache: Cache) -> None:
        assert cache.touch("missing", 10) is False
        cache.set("k", "v")
        assert cache.touch("k", 10) is True
        assert 9 < (cache.ttl("k") or 0) <= 10
        assert cache.persist("k") is True
        assert cache.ttl("k") is None
        assert cache.expire("k", 5) is True
        assert 4 < (cache.ttl("k") or 0) <= 5
        assert cache.touch("k", None) is True
        assert cache.ttl("k") is None
        assert cache.persist("missing") is False
        assert cache.touch("k", 0) is True
        assert cache.has("k") is False

    # --- many keys ---------------------------------------------------------------------------

    def test_get_many_returns_found_keys_in_the_callers_order(self, cache: Cache) -> None:
        items = {f"key{i}": i * 1.5 for i in range(50)}
        assert cache.set_many(items) == []
        asked = [f"key{i}" for i in reversed(range(60))]
        got = cache.get_many(asked)
        assert list(got) == [k for k in asked if k in items]
        assert got == {k: items[k] for k in asked if k in items}
        assert cache.get_many([]) == {}

    def test_set_many_with_ttl(self, cache: Cache) -> None:
        assert cache.set_many({"a": 1, "b": "two"}, ttl=30) == []
        assert cache.get_many(["a", "b"]) == {"a": 1, "b": "two"}
        assert 29 < (cache.ttl("b") or 0) <= 30
        assert cache.set_many({"a": 1}, ttl=0) == []
        assert cache.has("a") is False

    def test_delete_many_counts_what_existed(self, cache: Cache) -> None:
        cache.set_many({f"k{i}": i for i in range(30)})
        assert cache.delete_many([f"k{i}" for i in range(40)]) == 30
        assert cache.get_many([f"k{i}" for i in range(30)]) == {}
        assert cache.delete_many([]) == 0

    # --- clear, locks, decoding failures ------------------------------------------------------

    def test_clear_removes_only_this_prefix(self, cache: Cache, raw: RawClient) -> None:
        if not self.clear_by_prefix:
            cache.set("k", 1)
            with pytest.raises(ConfigurationError, match="flush=True"):
                cache.clear()
            assert cache.get("k") == 1
            return
        cache.set_many({f"k{i}": i for i in range(2500)})  # more than one SCAN/UNLINK batch
        other = Cache(cache.topology, prefix="other:")
        other.set_many({f"k{i}": i for i in range(20)})
        raw(b"t*x").set(b"t*x", b"glob chars in a key that is not ours")
        assert cache.clear() == 2500
        assert cache.get_many([f"k{i}" for i in range(2500)]) == {}
        assert len(other.get_many([f"k{i}" for i in range(20)])) == 20
        assert raw(b"t*x").get(b"t*x") is not None

    def test_clear_without_prefix_needs_flush(self, cache: Cache) -> None:
        bare = Cache(cache.topology)
        bare.set("k", 1)
        with pytest.raises(ConfigurationError, match="flush=True"):
            bare.clear()
        assert bare.get("k") == 1
        bare.clear(flush=True)
        assert bare.get("k") is None

    def test_lock_excludes_a_second_holder(self, cache: Cache) -> None:
        if not self.locks:
            with pytest.raises(ConfigurationError, match="lock"):
                cache.lock("job", timeout=5)
            return
        first = cache.lock("job", timeout=5)
        assert first.acquire(blocking=False)
        second = cache.lock("job", timeout=5, blocking_timeout=0.1)
        assert not second.acquire()
        first.release()
        assert second.acquire()
        second.release()

    def test_lock_refusals_say_what_is_wrong(self, cache: Cache) -> None:
        if not self.locks:
            with pytest.raises(ConfigurationError, match="locks"):
                cache.alock("job")
            return
        lock = cache.lock("job", timeout=0.2)
        with pytest.raises(LockError, match="does not hold"):
            lock.release()
        assert lock.acquire()
        assert lock.owned()
        assert lock.locked()
        assert settles(lambda: not lock.locked(), timeout=10)  # expired on the server
        assert not lock.owned()
        with pytest.raises(LockNotOwnedError):
            lock.extend(1)
        other = cache.lock("job", timeout=5)
        assert other.acquire(blocking=False)
        with pytest.raises(LockNotOwnedError):  # an expired holder cannot release the new one
            lock.release()
        assert other.owned()
        other.release()

    def test_lock_extend_and_reacquire_change_its_life(self, cache: Cache) -> None:
        if not self.locks:
            return
        with cache.lock("job", timeout=2) as lock:
            assert 1.0 < cache.ttl("job") <= 2.0
            assert lock.extend(30)
            assert 30.0 < cache.ttl("job") <= 32.0
            assert lock.extend(10, replace_ttl=True)
            assert 8.0 < cache.ttl("job") <= 10.0
            assert lock.reacquire()
            assert 1.0 < cache.ttl("job") <= 2.0
        assert not cache.has("job")  # released on leaving the block

    def test_async_lock_excludes_other_tasks(self, cache: Cache) -> None:
        if not self.locks:
            return
        inside: list[int] = []
        overlaps: list[int] = []

        async def worker(n: int) -> None:
            async with cache.alock("job", timeout=10, sleep=0.005):
                inside.append(n)
                if len(inside) > 1:
                    overlaps.append(n)
                await asyncio.sleep(0.01)
                inside.remove(n)

        async def main() -> None:
            await asyncio.gather(*(worker(n) for n in range(8)))
            lock = cache.alock("job", timeout=5)
            assert await lock.aacquire(blocking=False)
            assert await lock.aowned()
            assert await lock.alocked()
            assert not await cache.alock("job", blocking_timeout=0.05).aacquire()
            assert await lock.aextend(5)
            await lock.arelease()
            assert not await lock.alocked()

        asyncio.run(main())
        assert overlaps == []

    def test_corrupt_bytes_read_back_as_a_miss_with_a_warning(
        self, cache: Cache, raw: RawClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        raw(b"t:bad").set(b"t:bad", b"\xa0garbage that is not a pickle")
        raw(b"t:text").set(b"t:text", b"written by another program")
        assert cache.get("bad", "default") == "default"
        assert cache.get_many(["bad", "text"]) == {}
        cache.set_many({"good1": 1, "good2": "two", "good3": [3]})
        mixed = ["good1", "bad", "good2", "missing", "text", "good3"]
        assert cache.get_many(mixed) == {"good1": 1, "good2": "two", "good3": [3]}
        warned = [r for r in caplog.records if "unreadable value" in r.getMessage()]
        assert len(warned) == 1  # one line per 10 s, however many keys and batches
        assert "t:bad" in warned[0].getMessage()

    # --- the asyncio API (the same steps, on asyncio connections) ----------------------------

    native_async = True  # False where the topology's client has no asyncio (memcache)

    def test_async_api_matches_the_sync_one(self, cache: Cache) -> None:
        async def scenario() -> None:
            for value in VALUES:
                assert await cache.aset("k", value) is True
                assert await cache.aget("k") == value
            assert await cache.aget("missing", "fallback") == "fallback"
            assert await cache.aadd("k", "other") is False
            assert await cache.aadd("fresh", 1, ttl=60) is True
            assert await cache.ahas("fresh") is True
            assert await cache.aincr("fresh", 9) == 10
            assert await cache.adecr("fresh", 3) == 7
            with pytest.raises(MissingKeyError):
                await cache.aincr("nothing")
            await cache.aset("text", "not a number")
            with pytest.raises(NotAnIntegerError):
                await cache.aincr("text")
            assert await cache.atouch("fresh", 100) is True
            ttl = await cache.attl("fresh")
            assert ttl is not None
            assert 90 < ttl <= 100
            assert await cache.apersist("fresh") is True
            assert await cache.attl("fresh") is None
            assert await cache.atouch("nothing", 10) is False
            items = {f"many{i}": i for i in range(60)}
            assert await cache.aset_many(items, ttl=60) == []
            wanted = [*items, "absent"]
            assert await cache.aget_many(iter(wanted)) == items
            assert await cache.adelete_many([*items, "absent"]) == len(items)
            assert await cache.aget_many(items) == {}
            assert await cache.adelete("fresh") is True
            assert await cache.adelete("fresh") is False

        asyncio.run(scenario())
        assert cache.get("k") == VALUES[-1]  # what async wrote, sync reads

    def test_async_clear(self, cache: Cache) -> None:
        cache.set_many({f"c{i}": i for i in range(30)})
        if not self.clear_by_prefix:
            with pytest.raises(ConfigurationError):
                asyncio.run(cache.aclear())
            return
        assert asyncio.run(cache.aclear()) == 30
        assert cache.get_many([f"c{i}" for i in range(30)]) == {}

    def test_async_calls_use_no_threads(self, cache: Cache) -> None:
        if not self.native_async:
            pytest.skip("this topology's client has no asyncio: calls run in threads")

        class NoThreads(concurrent.futures.ThreadPoolExecutor):
            def submit(self, *args: Any, **kwargs: Any) -> Any:
                raise AssertionError("an async call went to a thread")

        async def scenario() -> None:
            asyncio.get_running_loop().set_default_executor(NoThreads())
            await cache.aset_many({f"n{i}": i for i in range(40)})
            assert await cache.aget_many([f"n{i}" for i in range(40)]) == {
                f"n{i}": i for i in range(40)
            }
            assert await cache.aincr("n1") == 2
            await cache.aset("x", "y", ttl=10)
            assert await cache.aget("x") == "y"

        asyncio.run(scenario())

    def test_async_concurrent_tasks_share_the_pools(self, cache: Cache) -> None:
        cache.set("counter", 0)

        async def scenario() -> None:
            await asyncio.gather(*(cache.aincr("counter") for _ in range(200)))
            got = await asyncio.gather(*(cache.aget_many(["counter", "absent"]) for _ in range(20)))
            assert all(found == {"counter": 200} for found in got)

        asyncio.run(scenario())
        assert cache.get("counter") == 200

    def test_async_cancelled_calls_leave_no_reply_behind(self, cache: Cache) -> None:
        keys = [f"c{i}" for i in range(300)]
        cache.set_many({key: key for key in keys})

        async def scenario() -> None:
            for _ in range(30):
                # Cancel batches mid-flight: their connections must not be reused with
                # replies still unread, or later calls would read someone else's answer.
                task = asyncio.ensure_future(cache.aget_many(keys))
                await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                assert await cache.aget("c7") == "c7"
                assert await cache.aget_many(keys[:50]) == {key: key for key in keys[:50]}

        asyncio.run(scenario())

    def test_async_works_from_several_event_loops(self, cache: Cache) -> None:
        # Django's async_to_sync and asyncio.run each make their own loop; an asyncio
        # connection belongs to one loop, so each loop gets its own pool.
        for round_ in range(3):
            asyncio.run(cache.aset("loop", round_))
            assert asyncio.run(cache.aget("loop")) == round_

    # --- lifecycle: event loops, close ---------------------------------------------------------

    def test_a_new_event_loop_per_call_retains_no_loop_and_no_connection(
        self, cache: Cache
    ) -> None:
        cache.set_many({f"k{i}": i for i in range(30)})
        keys = [f"k{i}" for i in range(30)]
        loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

        async def call() -> dict[str, Any]:
            loops.append(weakref.ref(asyncio.get_running_loop()))
            return await cache.aget_many(keys)

        for _ in range(5):
            assert asyncio.run(call()) == {k: i for i, k in enumerate(keys)}
        warm = len(open_sockets())
        for _ in range(200):
            assert asyncio.run(call()) == {k: i for i, k in enumerate(keys)}
        assert len(open_sockets()) <= warm  # asyncio.run per call: no socket piles up
        assert settles(lambda: all(loop() is None for loop in loops))  # no loop is kept
        leaves = [getattr(shard, "leaf", lambda: None)() for shard in cache.topology.shards()]
        assert all(leaf.async_loops == 0 for leaf in leaves if leaf is not None)

    def test_a_loop_closed_without_shutting_down_is_let_go_by_the_next_loop(
        self, cache: Cache
    ) -> None:
        cache.set("k", 1)
        loop = asyncio.new_event_loop()
        assert loop.run_until_complete(cache.aget("k")) == 1
        loop.close()  # no shutdown_asyncgens(): nothing told the topology
        gone = weakref.ref(loop)
        del loop
        assert asyncio.run(cache.aget("k")) == 1  # the next loop's first pool sweeps it
        assert settles(lambda: gone() is None)

    def test_after_close_calls_raise_and_nothing_is_left_open(self, cache: Cache) -> None:
        cache.set_many({f"k{i}": i for i in range(30)})
        assert cache.get_many([f"k{i}" for i in range(30)])["k7"] == 7
        assert cache.get("k1") == 1
        loop = asyncio.new_event_loop()  # a loop that stays open: its pools close with us
        assert loop.run_until_complete(cache.aget_many(["k1", "k2"])) == {"k1": 1, "k2": 2}
        assert not cache.topology.closed
        cache.close()
        cache.close()  # twice is harmless
        assert cache.topology.closed
        for call in (
            lambda: cache.get("k1"),
            lambda: cache.set("k1", 2),
            lambda: cache.get_many(["k1", "k2", "k3"]),
            lambda: cache.incr("k1"),
        ):
            with pytest.raises(ClosedError, match="closed"):
                call()
        with pytest.raises(ClosedError):
            loop.run_until_complete(cache.aget("k1"))
        with pytest.raises(ClosedError):
            asyncio.run(cache.aset_many({"k1": 1, "k2": 2}))
        loop.run_until_complete(asyncio.sleep(0.01))  # the loop runs the close we scheduled
        loop.close()
        assert settles(lambda: our_threads() <= self.threads_before), our_threads()
        assert settles(lambda: open_sockets() <= self.sockets_before)

    # --- integrity: a server that someone else can write to ------------------------------------

    def test_a_signed_cache_reads_planted_data_as_a_miss(
        self, cache: Cache, raw: RawClient
    ) -> None:
        signed = Cache(cache.topology, prefix="t:", signing_secret=SECRET, compressor="zlib")
        signed.set("mine", {"admin": False})
        signed.set("count", 5)
        planted = {
            b"t:int1": b"1",
            b"t:int2": b"-7",
            b"t:int3": b"1_0\n",
            b"t:pickle": b"\xa0" + pickle.dumps({"admin": True}),
            b"t:bomb": b"\xa1" + zlib.compress(pickle.dumps(b"\0" * 20_000_000)),
            b"t:moved": raw(b"t:mine").get(b"t:mine"),  # signed, but for another key
            b"t:moved_count": raw(b"t:count").get(b"t:count"),
        }
        for key, data in planted.items():
            raw(key).set(key, data)
        names = [key[2:].decode() for key in planted]
        assert [signed.get(name) for name in names] == [None] * len(names)
        assert signed.get_many(names) == {}
        assert asyncio.run(signed.aget_many(names)) == {}
        for name in ("int1", "pickle", "moved_count"):
            with pytest.raises(MissingKeyError):
                signed.incr(name)
        assert signed.incr("int2", create=True) == 1  # a forged counter starts again
        assert signed.get("mine") == {"admin": False}
        assert signed.incr("count", 2) == 7
        rotated = Cache(cache.topology, prefix="t:", signing_secret=["a newer secret!!", SECRET])
        assert rotated.get("mine") == {"admin": False}  # old secrets still verify
        rotated.set("mine", {"admin": False, "v": 2})
        assert signed.get("mine") is None  # the new secret signs

    def test_a_compression_bomb_is_a_miss_within_max_value_size(
        self, cache: Cache, raw: RawClient
    ) -> None:
        bounded = Cache(cache.topology, prefix="t:", max_value_size=1_000_000)
        raw(b"t:bomb").set(b"t:bomb", b"\xa1" + zlib.compress(pickle.dumps(b"\0" * 50_000_000)))
        tracemalloc.start()
        try:
            assert bounded.get("bomb") is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 10_000_000
        with pytest.raises(SerializationError, match="too large"):
            bounded.set("big", b"x" * 2_000_000)

    def test_signed_incr_is_exact_under_16_threads(self, cache: Cache) -> None:
        signed = Cache(cache.topology, prefix="t:", signing_secret=SECRET)
        signed.set("hits", 0, ttl=600)

        def bump() -> None:
            for _ in range(500):
                signed.incr("hits")

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            for future in [pool.submit(bump) for _ in range(16)]:
                future.result(timeout=300)
        assert signed.get("hits") == 16 * 500
        assert 0 < (signed.ttl("hits") or 0) <= 600  # the time to live was kept
        assert signed.decr("hits", 8000) == 0

    def test_replace_stores_only_over_an_existing_key(self, cache: Cache) -> None:
        assert cache.replace("r", 1) is False
        assert cache.get("r") is None
        cache.set("r", 0)
        assert cache.replace("r", 2, ttl=60) is True
        assert cache.get("r") == 2
        assert 0 < (cache.ttl("r") or 0) <= 60
        assert asyncio.run(cache.areplace("r", 3)) is True
        assert cache.get("r") == 3
        assert cache.replace("r", 4, ttl=0) is True  # not kept: gone, as set would do
        assert cache.get("r") is None

    def test_incr_failures_are_typed_errors(self, cache: Cache) -> None:
        for signed in (cache, Cache(cache.topology, prefix="t:", signing_secret=SECRET)):
            signed.set("text", "abc")
            signed.set("n", 1)
            with pytest.raises(NotAnIntegerError):
                signed.incr("text")
            # Past the servers' 64-bit counters the integers are Python's (django-redis's too).
            assert signed.incr("n", 2**64) == 2**64 + 1
            assert signed.decr("n", 2**65) == 1 - 2**64
            assert signed.incr("n", 2**64) == 1
            signed.set("big", 2**63 - 1)
            assert signed.incr("big") == 2**63  # INCR would overflow here
            assert signed.decr("big") == 2**63 - 1  # DECR refuses 2**63 as "not an integer"
            with pytest.raises(InvalidKeyError):
                signed.incr("")
            with pytest.raises(InvalidKeyError):
                signed.incr(7)  # type: ignore[arg-type]
            assert signed.get("n") == 1
            assert signed.get("text") == "abc"

    def test_aexpire_is_expires_twin(self, cache: Cache) -> None:
        cache.set("k", 1)
        assert asyncio.run(cache.aexpire("k", 60)) is True
        assert 0 < (cache.ttl("k") or 0) <= 60
        assert asyncio.run(cache.aexpire("missing", 60)) is False
