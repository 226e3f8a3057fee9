"""The sharded memcache client on 3 real memcacheds: DESIGN.md's table 3a, cell by cell.

"No I/O" is checked with the server's own counters (`ops`), which a skipped shard must
leave unchanged.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardcache import Cache, MemcacheTopology, MissingKeyError, ShardUnavailableError
from shardcache.testing import MemcachedServers, wait_until
from shardcache.topologies.memcache import (
    NO_EXPIRATION_INCR,
    GetResponse,
    Item,
    MemcachedState,
    MemcacheShard,
    ShardedMemcacheClient,
    ShardState,
    StaticShardManager,
    Status,
)
from shardcache.topologies.memcache.topology import Op
from tests.cache_contract import CacheContract, RawClient

ACTIVE, WRITE_ONLY, WARM_UP, DOWN = (
    MemcachedState.ACTIVE,
    MemcachedState.WRITE_ONLY,
    MemcachedState.WARM_UP,
    MemcachedState.DOWN,
)
SKIPPED = [WRITE_ONLY, WARM_UP, DOWN]
COUNTERS = (
    "cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses", "incr_hits",
    "incr_misses", "decr_hits", "decr_misses", "cas_hits", "cas_misses", "cas_badval",
)  # fmt: skip


def ops(servers: MemcachedServers, index: int) -> int:
    """Commands the server has run (its own counters)."""
    conn = servers.servers[index].client()
    try:
        stats = conn.stats()
    finally:
        conn.close()
    return sum(int(stats[name.encode()]) for name in COUNTERS)


Make = Callable[..., ShardedMemcacheClient]


@pytest.fixture
def make(clean_memcached_servers: MemcachedServers) -> Iterator[Make]:
    """``make(state_of_shard_1, **client_options)``: shards 0 and 2 ACTIVE."""
    clients: list[ShardedMemcacheClient] = []
    addresses = clean_memcached_servers.addresses

    def build(state: MemcachedState = ACTIVE, **options: object) -> ShardedMemcacheClient:
        warm_source = options.pop("warm_source", None)
        states = [
            ShardState(addresses[0]),
            ShardState(addresses[1], state, warm_source),  # type: ignore[arg-type]
            ShardState(addresses[2]),
        ]
        manager = StaticShardManager(states, retry_timeout=float(options.pop("retry_timeout", 1)))  # type: ignore[arg-type]
        client = ShardedMemcacheClient(manager, **options)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def key_on(client: ShardedMemcacheClient, index: int, tag: str = "k") -> bytes:
    """A key that the shard function puts on shard ``index``."""
    for n in itertools.count():
        key = f"{tag}{n}".encode()
        shard = client.manager.get_shard(key)
        if shard is not None and shard.index == index:
            return key
    raise AssertionError("unreachable")


def seed(servers: MemcachedServers, index: int, key: bytes, value: bytes) -> None:
    conn = servers.servers[index].client()
    try:
        conn.set(key, value, noreply=False)
    finally:
        conn.close()


def peek(servers: MemcachedServers, index: int, key: bytes) -> bytes | None:
    conn = servers.servers[index].client()
    try:
        result: bytes | None = conn.get(key)
        return result
    finally:
        conn.close()


# --- reads -------------------------------------------------------------------------------------


def test_get_on_active_reads_the_server(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make()
    key = key_on(client, 1)
    assert client.get(key).status is Status.KEY_NOT_FOUND  # a miss is not an error
    assert client.get(key).error is None
    client.set(Item(key, b"v", flags=7))
    hit = client.get(key)
    assert (hit.status, hit.value, hit.flags) == (Status.NO_ERROR, b"v", 7)
    assert client.gets(key).cas != 0


@pytest.mark.parametrize("state", SKIPPED)
def test_get_and_gets_on_a_non_active_shard_miss_without_io(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState
) -> None:
    client = make(state)
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"there")
    before = ops(clean_memcached_servers, 1)
    assert client.get(key).status is Status.KEY_NOT_FOUND
    assert client.get_multi([key])[key].value is None
    assert client.gets(key).cas == 0
    assert ops(clean_memcached_servers, 1) == before


@pytest.mark.parametrize(
    ("state", "io"), [(ACTIVE, True), (WRITE_ONLY, True), (WARM_UP, True), (DOWN, False)]
)
def test_get_sentinels_reads_every_state_but_down(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState, io: bool
) -> None:
    client = make(state)
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"there")
    before = ops(clean_memcached_servers, 1)
    got = client.get_sentinels([key])[key]
    assert got.found is io
    assert (got.cas != 0) is io
    assert (ops(clean_memcached_servers, 1) > before) is io


def test_get_multi_batches_per_shard_and_keeps_other_shards_answering(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make(DOWN)
    keys = [f"m{i}".encode() for i in range(60)]
    client.manager.update_shard_states([ShardState(a) for a in clean_memcached_servers.addresses])
    assert all(r.ok for r in client.set_multi([Item(k, k) for k in keys]))
    client.manager.update_shard_states(
        [
            ShardState(a, DOWN if i == 1 else ACTIVE)
            for i, a in enumerate(clean_memcached_servers.addresses)
        ]
    )
    got = client.get_multi(keys)
    on_down = {k for k in keys if client.manager.get_shard(k).index == 1}  # type: ignore[union-attr]
    assert {k for k, r in got.items() if r.found} == set(keys) - on_down
    assert all(got[k].value == k for k in keys if k not in on_down)


# --- writes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", SKIPPED)
@pytest.mark.parametrize(
    "op", ["set", "set_cas", "cas_multi", "add", "replace", "append", "prepend", "touch"]
)
def test_plain_writes_on_a_non_active_shard_succeed_without_io(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState, op: str
) -> None:
    client = make(state)
    key = key_on(client, 1)
    before = ops(clean_memcached_servers, 1)
    response = {
        "set": lambda: client.set(Item(key, b"v")),
        "set_cas": lambda: client.set(Item(key, b"v", cas=12345)),
        "cas_multi": lambda: client.cas_multi([Item(key, b"v")])[0],
        "add": lambda: client.add(Item(key, b"v")),
        "replace": lambda: client.replace(Item(key, b"v")),
        "append": lambda: client.append(key, b"v"),
        "prepend": lambda: client.prepend(key, b"v"),
        "touch": lambda: client.touch(key, 10),
    }[op]()
    assert (response.status, response.cas, response.error) == (Status.NO_ERROR, 0, None)
    assert ops(clean_memcached_servers, 1) == before
    assert peek(clean_memcached_servers, 1, key) is None


def test_writes_on_active(make: Make, clean_memcached_servers: MemcachedServers) -> None:
    client = make()
    key = key_on(client, 1)
    assert client.replace(Item(key, b"x")).status is Status.ITEM_NOT_STORED
    assert client.add(Item(key, b"a")).ok
    assert client.add(Item(key, b"b")).status is Status.ITEM_NOT_STORED
    assert client.append(key, b"z").ok
    assert client.prepend(key, b"<").ok
    assert peek(clean_memcached_servers, 1, key) == b"<az"
    assert client.replace(Item(key, b"r")).ok
    assert client.touch(key, 100).ok
    assert client.touch(b"absent", 100).status is Status.KEY_NOT_FOUND


def test_conditional_set_on_active(make: Make) -> None:
    client = make()
    key = key_on(client, 1)
    assert client.set(Item(key, b"v", cas=99)).status is Status.KEY_NOT_FOUND
    client.set(Item(key, b"v1"))
    cas = client.gets(key).cas
    assert client.set(Item(key, b"v2", cas=cas + 1)).status is Status.KEY_EXISTS
    assert client.set(Item(key, b"v2", cas=cas)).ok
    assert client.get(key).value == b"v2"


def test_cas_multi_adds_when_cas_is_zero(make: Make) -> None:
    client = make()
    fresh, taken = key_on(client, 0, "f"), key_on(client, 2, "t")
    client.set(Item(taken, b"old"))
    responses = client.cas_multi([Item(fresh, b"new"), Item(taken, b"new")])
    assert [r.status for r in responses] == [Status.NO_ERROR, Status.KEY_EXISTS]
    assert client.get(taken).value == b"old"


@pytest.mark.parametrize("op", ["set_sentinels", "cas_sentinels"])
@pytest.mark.parametrize(
    ("state", "io", "errors_surface"),
    [(ACTIVE, True, True), (WRITE_ONLY, True, True), (WARM_UP, True, False), (DOWN, False, False)],
)
def test_sentinel_writes(
    make: Make,
    clean_memcached_servers: MemcachedServers,
    op: str,
    state: MemcachedState,
    io: bool,
    errors_surface: bool,
) -> None:
    client = make(state)
    key, other = key_on(client, 1, "a"), key_on(client, 1, "b")
    write = getattr(client, op)
    before = ops(clean_memcached_servers, 1)
    assert write([Item(key, b"v")])[0].ok
    assert (ops(clean_memcached_servers, 1) > before) is io  # counted before peeking
    assert (peek(clean_memcached_servers, 1, key) == b"v") is io
    seed(clean_memcached_servers, 1, other, b"newer")
    conflict = write([Item(other, b"stale", cas=1)])[0]  # wrong CAS id
    assert (conflict.status is Status.KEY_EXISTS) is errors_surface
    if not errors_surface:
        assert conflict.status is Status.NO_ERROR  # a warm-up write never fails
    assert peek(clean_memcached_servers, 1, other) == b"newer"


def test_value_too_large_is_a_status_not_a_dropped_connection(make: Make) -> None:
    client = make()
    key = key_on(client, 1)
    big = client.set(Item(key, b"x" * (2 * 1024 * 1024)))
    assert big.status is Status.VALUE_TOO_LARGE
    assert client.set(Item(key, b"small")).ok
    assert client.get(key).value == b"small"


# --- deletes and counters ----------------------------------------------------------------------


def test_delete_on_active(make: Make) -> None:
    client = make()
    key = key_on(client, 1)
    client.set(Item(key, b"v"))
    assert client.delete(key).ok
    assert client.delete(key).status is Status.KEY_NOT_FOUND
    assert [r.status for r in client.delete_multi([key, key_on(client, 0)])] == [
        Status.KEY_NOT_FOUND,
        Status.KEY_NOT_FOUND,
    ]


@pytest.mark.parametrize(
    ("state", "options", "sent"),
    [
        (WRITE_ONLY, {}, False),
        (WRITE_ONLY, {"invalidate_non_active": True}, True),
        (DOWN, {}, False),
        (WARM_UP, {}, False),
    ],
)
def test_delete_on_non_active_shards(
    make: Make,
    clean_memcached_servers: MemcachedServers,
    state: MemcachedState,
    options: dict[str, object],
    sent: bool,
) -> None:
    client = make(state, **options)
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"v")
    before = ops(clean_memcached_servers, 1)
    assert client.delete(key).ok
    assert (ops(clean_memcached_servers, 1) > before) is sent  # counted before peeking
    assert (peek(clean_memcached_servers, 1, key) is None) is sent


def test_delete_on_warm_up_with_a_source_deletes_on_both(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    addresses = clean_memcached_servers.addresses
    client = make(WARM_UP, warm_source=addresses[0])
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"cold copy")
    seed(clean_memcached_servers, 0, key, b"warm copy")
    assert client.delete(key).ok
    assert peek(clean_memcached_servers, 1, key) is None
    assert peek(clean_memcached_servers, 0, key) is None
    assert client.get(key).status is Status.KEY_NOT_FOUND  # and it does not come back


def test_increment_and_decrement_on_active(make: Make) -> None:
    client = make()
    key = key_on(client, 1)
    assert (
        client.increment(key, 5, NO_EXPIRATION_INCR, NO_EXPIRATION_INCR).status
        is Status.KEY_NOT_FOUND
    )
    assert client.increment(key, 5, init_value=10).count == 10  # created at init_value
    assert client.increment(key, 5).count == 15
    assert client.decrement(key, 100).count == 0  # floors at 0
    client.set(Item(key, b"text"))
    assert client.increment(key, 1).status is Status.INCR_DECR_ON_NON_NUMERIC_VALUE


@pytest.mark.parametrize("state", SKIPPED)
def test_counters_on_a_non_active_shard_are_zero_without_io(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState
) -> None:
    client = make(state)
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"41")
    before = ops(clean_memcached_servers, 1)
    for response in (client.increment(key, 1, 0), client.decrement(key, 1, 0)):
        assert (response.status, response.count) == (Status.NO_ERROR, 0)
    assert ops(clean_memcached_servers, 1) == before
    assert peek(clean_memcached_servers, 1, key) == b"41"


# --- every shard, bad keys, unmapped keys ------------------------------------------------------


@pytest.mark.parametrize("state", [ACTIVE, *SKIPPED])
def test_flush_stat_version_verbosity_reach_every_shard(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState
) -> None:
    client = make(state)
    assert sorted(client.version().versions) == [0, 1, 2]
    assert all(v.startswith("1.") for v in client.version().versions.values())
    assert sorted(client.stat().entries) == [0, 1, 2]
    assert not client.verbosity(0).errors
    key = key_on(client, 1)
    seed(clean_memcached_servers, 1, key, b"v")
    assert not client.flush().errors
    assert peek(clean_memcached_servers, 1, key) is None
    if state is DOWN:
        assert sorted(make(DOWN, skip_down=True).version().versions) == [0, 2]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"x" * 251,
        b"with space",
        b"tab\tkey",
        b"nl\nkey",
        b"del\x7f",
        "é".encode()[:1] + b"\x00",
    ],
)
def test_invalid_keys_fail_per_key_without_io(
    make: Make, clean_memcached_servers: MemcachedServers, bad: bytes
) -> None:
    client = make()
    good = key_on(client, 0)
    before = [ops(clean_memcached_servers, i) for i in range(3)]
    assert client.get(bad).status is Status.INVALID_ARGUMENTS
    assert client.set(Item(bad, b"v")).status is Status.INVALID_ARGUMENTS
    assert client.delete(bad).status is Status.INVALID_ARGUMENTS
    assert client.increment(bad, 1).status is Status.INVALID_ARGUMENTS
    assert [ops(clean_memcached_servers, i) for i in range(3)] == before
    results = client.get_multi([bad, good])
    assert results[bad].status is Status.INVALID_ARGUMENTS
    assert results[good].status is Status.KEY_NOT_FOUND


def test_high_bytes_and_250_byte_keys_are_valid(make: Make) -> None:
    client = make()
    for key in (b"\x80\xff-utf8-\xc3\xa9", b"k" * 250):
        assert client.set(Item(key, b"v")).ok
        assert client.get(key).value == b"v"


def test_unmapped_keys_are_a_per_key_error(clean_memcached_servers: MemcachedServers) -> None:
    manager = StaticShardManager(
        clean_memcached_servers.addresses, lambda key, n: -1 if key.startswith(b"x") else 0
    )
    client = ShardedMemcacheClient(manager)
    assert client.get(b"xkey").status is Status.UNMAPPED_KEY
    assert "does not map to any memcache shard" in str(client.set(Item(b"xkey", b"v")).error)
    assert client.set(Item(b"key", b"v")).ok
    client.close()


# --- states at run time, failures ---------------------------------------------------------------


def test_update_shard_states_keeps_pools_and_warns_when_keys_remap(
    make: Make, clean_memcached_servers: MemcachedServers, caplog: pytest.LogCaptureFixture
) -> None:
    client = make()
    before = client.manager.get_all_shards()
    addresses = clean_memcached_servers.addresses
    client.manager.update_shard_states(
        [ShardState(a, DOWN if i == 1 else ACTIVE) for i, a in enumerate(addresses)]
    )
    after = client.manager.get_all_shards()
    assert [s.pool for s in after] == [s.pool for s in before]  # state-only: same pools
    assert after[1].state is DOWN
    assert "remap" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="shardcache"):
        client.manager.update_shard_states(addresses[:2])
    assert "keys remap" in caplog.text


def test_consistent_caching_with_cas_the_slow_filler_loses(make: Make) -> None:
    client = make()
    key = key_on(client, 1)
    client.set(Item(key, b"v0"))
    fast, slow = client.get_sentinels([key])[key], client.get_sentinels([key])[key]
    assert fast.cas == slow.cas != 0
    assert client.cas_sentinels([Item(key, b"fresh", cas=fast.cas)])[0].ok
    lost = client.cas_sentinels([Item(key, b"stale", cas=slow.cas)])[0]
    assert lost.status is Status.KEY_EXISTS
    assert client.get(key).value == b"fresh"
    # A miss: both fillers add (cas 0); only the first one lands.
    other = key_on(client, 2)
    results = [client.cas_sentinels([Item(other, v)])[0].status for v in (b"first", b"second")]
    assert results == [Status.NO_ERROR, Status.KEY_EXISTS]
    assert client.get(other).value == b"first"


def test_a_killed_memcached_misses_fast_then_serves_again_after_retry_timeout(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make(retry_timeout=1)
    keys = [f"kill{i}".encode() for i in range(60)]
    assert all(r.ok for r in client.set_multi([Item(k, k) for k in keys]))
    victim = clean_memcached_servers.servers[1]
    on_victim = [k for k in keys if client.manager.get_shard(k).index == 1]  # type: ignore[union-attr]
    clean_memcached_servers.kill(victim)
    results = client.get_multi(keys)
    assert {k for k, r in results.items() if r.status is Status.CONNECTION_UNAVAILABLE} == set(
        on_victim
    )
    assert all(results[k].value == k for k in keys if k not in on_victim)  # no remapping
    assert "Connection unavailable for memcache shard 1" in str(results[on_victim[0]].error)
    clean_memcached_servers.restart(victim)
    wait_until(
        lambda: client.get(on_victim[0]).status is Status.KEY_NOT_FOUND,
        timeout=10,
        what="the shard to serve again",
    )
    assert client.set(Item(on_victim[0], b"back")).ok


def test_thread_safe_under_8_threads(make: Make) -> None:
    client = make()
    failures: list[str] = []

    def work(n: int) -> None:
        for i in range(200):
            key = f"t{n}:{i}".encode()
            if not client.set(Item(key, key)).ok or client.get(key).value != key:
                failures.append(key.decode())

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# --- Cache on the sharded memcache ---------------------------------------------------------


class MemcacheRaw:
    """The few raw calls the cache contract makes, on the memcached holding a key."""

    def __init__(self, server: object) -> None:
        self.conn = server.client()  # type: ignore[attr-defined]

    def exists(self, key: bytes) -> int:
        return 0 if self.conn.get(key) is None else 1

    def get(self, key: bytes) -> bytes | None:
        result: bytes | None = self.conn.get(key)
        return result

    def set(self, key: bytes, value: bytes) -> bool:
        return bool(self.conn.set(key, value, noreply=False))

    def incr(self, key: bytes) -> int:
        return int(self.conn.incr(key, 1, noreply=False))


class TestMemcacheCache(CacheContract):
    clear_by_prefix = False  # memcached cannot list keys
    locks = False
    native_async = False  # pymemcache has no asyncio client

    @pytest.fixture(autouse=True)
    def _no_redis_command(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        # Every command a memcache shard runs during the contract is a memcache operation
        # from its own dialect: no Redis command is built for it or parsed by it.
        seen: list[object] = []
        run = MemcacheShard._run

        def recording(shard: MemcacheShard, command: Any) -> Any:
            seen.append(command[0])
            return run(shard, command)

        monkeypatch.setattr(MemcacheShard, "_run", recording)
        yield
        assert all(isinstance(op, Op) for op in seen), [op for op in seen if not isinstance(op, Op)]

    @pytest.fixture
    def client(self, clean_memcached_servers: MemcachedServers) -> Iterator[ShardedMemcacheClient]:
        client = ShardedMemcacheClient(StaticShardManager(clean_memcached_servers.addresses))
        yield client
        client.close()

    @pytest.fixture
    def cache(self, client: ShardedMemcacheClient) -> Cache:
        return Cache(MemcacheTopology(client), prefix="t:")

    @pytest.fixture
    def raw(
        self, client: ShardedMemcacheClient, clean_memcached_servers: MemcachedServers
    ) -> RawClient:
        def raw(key: bytes) -> MemcacheRaw:
            return MemcacheRaw(clean_memcached_servers.servers[client.manager.get_shard(key).index])  # type: ignore[union-attr]

        return raw  # type: ignore[return-value]


@pytest.mark.parametrize("state", SKIPPED)
def test_cache_add_on_a_non_active_shard_is_not_stored_and_incr_is_a_miss(
    make: Make, state: MemcachedState
) -> None:
    client = make(state)
    cache = Cache(MemcacheTopology(client))
    key = key_on(client, 1).decode()
    assert cache.add(key, 1) is False  # add-as-a-lock stays safe
    with pytest.raises(MissingKeyError):
        cache.incr(key)
    assert cache.get(key) is None


def test_cache_over_memcache_with_a_dead_server_and_ignore_errors(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make()
    strict = Cache(MemcacheTopology(client))
    lenient = Cache(MemcacheTopology(client), ignore_errors=True)
    keys = [f"d{i}" for i in range(30)]
    strict.set_many({k: k for k in keys})
    clean_memcached_servers.kill(clean_memcached_servers.servers[1])
    on_dead = [k for k in keys if client.manager.get_shard(k.encode()).index == 1]  # type: ignore[union-attr]
    with pytest.raises(ShardUnavailableError):
        strict.get(on_dead[0])
    assert lenient.get_many(keys) == {k: k for k in keys if k not in on_dead}
    assert lenient.set(on_dead[0], 1) is False


def test_rollout_write_only_then_warm_up_with_read_through_then_active(
    clean_memcached_servers: MemcachedServers,
) -> None:
    m0, m1, m2 = clean_memcached_servers.addresses
    manager = StaticShardManager([m0, m1])
    client = ShardedMemcacheClient(manager)
    keys = [f"r{i}".encode() for i in range(80)]
    expected = {k: b"value-" + k for k in keys}
    assert all(
        r.ok for r in client.set_multi([Item(k, v, expiration=300) for k, v in expected.items()])
    )
    moving = [k for k in keys if manager.get_shard(k).index == 1]  # type: ignore[union-attr]
    assert len(moving) > 10

    def check_never_wrong() -> dict[bytes, GetResponse]:
        got = client.get_multi(keys)
        assert all(r.value in (None, expected.get(k)) for k, r in got.items())
        return got

    # 1. m2 replaces m1 as WRITE_ONLY: its keys miss, sentinel writes fill it.
    manager.update_shard_states([ShardState(m0), ShardState(m2, WRITE_ONLY)])
    assert not any(check_never_wrong()[k].found for k in moving)
    filled = moving[:5]
    for key in filled:
        miss = client.get_sentinels([key])[key]
        assert (miss.found, miss.cas) == (False, 0)
        assert client.cas_sentinels([Item(key, expected[key], expiration=300)])[0].ok
    assert all(peek(clean_memcached_servers, 2, k) == expected[k] for k in filled)

    # 2. WARM_UP with m1 as the warm source: cold misses are read through and backfilled.
    manager.update_shard_states([ShardState(m0), ShardState(m2, WARM_UP, warm_source=m1)])
    got = check_never_wrong()
    assert all(got[k].value == expected[k] for k in moving)  # every cold miss became a hit
    shard = manager.get_all_shards()[1]
    assert shard.counters.get("backfills", 0) == len(moving) - len(filled)
    cold = ShardedMemcacheClient(StaticShardManager([m2]))
    ttl = cold.remaining_ttl(cold.manager.get_all_shards()[0], moving[-1])
    assert ttl is not None
    assert 250 < ttl <= 300  # the warm item's remaining TTL, not forever
    warm_reads = ops(clean_memcached_servers, 1)
    check_never_wrong()
    assert ops(clean_memcached_servers, 1) == warm_reads  # now served by the cold shard alone
    deleted = moving[-1]
    assert client.delete(deleted).ok  # on the cold shard and its warm source
    assert not check_never_wrong()[deleted].found  # and it does not come back
    expected.pop(deleted)

    # 3. ACTIVE: m2 serves everything it was given, the deleted key stays gone.
    manager.update_shard_states([ShardState(m0), ShardState(m2)])
    got = check_never_wrong()
    assert all(got[k].value == expected[k] for k in moving if k != deleted)
    assert not got[deleted].found
    cold.close()
    client.close()


def test_sentinel_mappings_skip_down_shards_and_flag_warming_up(
    clean_memcached_servers: MemcachedServers,
) -> None:
    addresses = clean_memcached_servers.addresses
    manager = StaticShardManager(
        [
            ShardState(addresses[0]),
            ShardState(addresses[1], WARM_UP),
            ShardState(addresses[2], DOWN),
        ]
    )
    keys = [f"s{i}".encode() for i in range(60)]
    mappings = manager.get_shards_for_sentinels_from_keys(keys)
    assert sorted((m.shard.index, m.warming_up) for m in mappings if m.shard) == [
        (0, False),
        (1, True),
    ]
    items = manager.get_shards_for_sentinels_from_items([Item(k) for k in keys])
    assert sum(len(m.entries) for m in items) == sum(len(m.entries) for m in mappings)
    manager.close()


def test_a_killed_memcached_under_8_threads_with_ignore_errors(
    make: Make,
    clean_memcached_servers: MemcachedServers,
    shardcache_report: Callable[[str], None],
) -> None:
    client = make(retry_timeout=1)
    cache = Cache(MemcacheTopology(client), ignore_errors=True)
    victim = clean_memcached_servers.servers[1]
    stop = threading.Event()
    errors: list[BaseException] = []
    stale: list[str] = []

    def work(n: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"w{n}:{i % 50}"
            i += 1
            try:
                stored = cache.set(key, i)
                got = cache.get(key)
                if got is not None and (got != i or not stored):
                    stale.append(key)  # a value other than the one just written
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(
            lambda: client.manager.get_all_shards()[1].counters.get("ok", 0) > 200,
            timeout=30,
            what="traffic",
        )
        clean_memcached_servers.kill(victim)
        wait_until(
            lambda: not client.manager.get_all_shards()[1].healthy,
            timeout=30,
            what="the shard marked down",
        )
        clean_memcached_servers.restart(victim)
        restarted = time.monotonic()
        served = client.manager.get_all_shards()[1].counters.get("ok", 0)
        wait_until(
            lambda: client.manager.get_all_shards()[1].counters.get("ok", 0) > served,
            timeout=30,
            what="the restarted memcached to be used again",
        )
        back = time.monotonic() - restarted
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    shardcache_report(
        f"memcached killed under 8 threads: back in service {back:.2f}s after its restart"
    )
    assert errors == []
    assert stale == []


@pytest.mark.parametrize(("state", "writes_ok"), [(WARM_UP, True), (WRITE_ONLY, False)])
def test_connect_failure_on_sentinel_calls(
    make: Make, clean_memcached_servers: MemcachedServers, state: MemcachedState, writes_ok: bool
) -> None:
    client = make(state)
    key = key_on(client, 1)
    clean_memcached_servers.kill(clean_memcached_servers.servers[1])
    write = client.set_sentinels([Item(key, b"v")])[0]
    assert (write.status is Status.NO_ERROR) is writes_ok  # a warm-up write never fails
    if not writes_ok:
        assert write.status is Status.CONNECTION_UNAVAILABLE
    read = client.get_sentinels([key])[key]
    assert read.status is Status.CONNECTION_UNAVAILABLE  # reads surface the error
    assert client.get(key).status is Status.KEY_NOT_FOUND  # a plain get never dials it


def test_gets_on_warm_up_reads_through_and_returns_the_cold_cas(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make(WARM_UP, warm_source=clean_memcached_servers.addresses[0])
    key = key_on(client, 1)
    seed(clean_memcached_servers, 0, key, b"from the warm server")
    got = client.gets(key)
    assert got.value == b"from the warm server"
    assert got.cas != 0
    assert peek(clean_memcached_servers, 1, key) == b"from the warm server"  # backfilled
    assert client.cas_sentinels([Item(key, b"newer", cas=got.cas)])[0].ok  # the cold CAS id


def test_state_updates_reuse_and_close_warm_source_pools(
    clean_memcached_servers: MemcachedServers,
) -> None:
    m0, m1, m2 = clean_memcached_servers.addresses
    manager = StaticShardManager([m0, ShardState(m2, WARM_UP, warm_source=m1)])
    source_pool = manager.get_all_shards()[1].warm_source.pool  # type: ignore[union-attr]
    manager.update_shard_states([m0, ShardState(m2, WARM_UP, warm_source=m1)])
    assert manager.get_all_shards()[1].warm_source.pool is source_pool  # type: ignore[union-attr]
    manager.update_shard_states([m0, m2])  # warm-up over: the source's pool is closed
    assert source_pool.closed
    manager.close()


def test_read_through_ttl_is_capped_by_warm_max_ttl(
    make: Make, clean_memcached_servers: MemcachedServers
) -> None:
    client = make(WARM_UP, warm_source=clean_memcached_servers.addresses[0], warm_max_ttl=60)
    key = key_on(client, 1)
    conn = clean_memcached_servers.servers[0].client()
    try:
        conn.set(key, b"no expiry on the warm server", expire=0, noreply=False)
    finally:
        conn.close()
    assert client.get(key).value == b"no expiry on the warm server"
    cold = client.manager.get_all_shards()[1]
    ttl = client.remaining_ttl(cold, key)
    assert ttl is not None
    assert 0 < ttl <= 60  # capped, not "forever" like the source
