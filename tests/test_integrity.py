"""Integrity against keys chosen by an attacker and counters pushed out of range: typed errors,
before any I/O, and nothing else touched (the servers' own counters say so)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from shardcache import (
    Cache,
    InvalidKeyError,
    MemcacheTopology,
    NotAnIntegerError,
    ShardedMemcacheClient,
    StaticShardManager,
)
from shardcache.testing import MemcachedServers

BAD_KEYS = {
    "crlf": "k\r\nflush_all",
    "crlf set": "k 0 0 1\r\nset planted 0 0 1\r\nx",
    "space": "a space",
    "control": "ctl\x01x",
    "251 bytes": "x" * 251,
    "empty": "",
}

CALLS: dict[str, Callable[[Cache, str], Any]] = {
    "get": lambda c, k: c.get(k),
    "set": lambda c, k: c.set(k, 1),
    "add": lambda c, k: c.add(k, 1),
    "delete": lambda c, k: c.delete(k),
    "has": lambda c, k: c.has(k),
    "ttl": lambda c, k: c.ttl(k),
    "incr": lambda c, k: c.incr(k),
    "incr create": lambda c, k: c.incr(k, create=True),
    "decr": lambda c, k: c.decr(k),
    "touch": lambda c, k: c.touch(k, 10),
    "persist": lambda c, k: c.persist(k),
    "get_many": lambda c, k: c.get_many(["other", k]),
    "set_many": lambda c, k: c.set_many({"other2": 2, k: 1}),
    "delete_many": lambda c, k: c.delete_many(["other", k]),
}


_COUNTED = {b"get", b"delete", b"incr", b"decr", b"cas", b"touch"}


def server_counters(servers: MemcachedServers) -> list[dict[bytes, Any]]:
    """Every command counter of every memcached (``cmd_*``, hits and misses, items)."""
    found = []
    for server in servers.servers:
        conn = server.client()
        try:
            stats = conn.stats()
        finally:
            conn.close()
        # What only a command moves (curr_items also moves as the LRU crawler reclaims).
        found.append(
            {
                name: value
                for name, value in stats.items()
                if name.startswith(b"cmd_")
                or (name.split(b"_")[0] in _COUNTED and name.endswith((b"_hits", b"_misses")))
                or name == b"total_items"
            }
        )
    return found


@pytest.fixture
def cache(clean_memcached_servers: MemcachedServers) -> Iterator[Cache]:
    client = ShardedMemcacheClient(StaticShardManager(clean_memcached_servers.addresses))
    yield Cache(MemcacheTopology(client))
    client.close()


@pytest.mark.parametrize("call", list(CALLS))
def test_every_memcache_call_refuses_a_bad_key_before_any_io(
    cache: Cache, clean_memcached_servers: MemcachedServers, call: str
) -> None:
    cache.set("other", "stays")
    before = server_counters(clean_memcached_servers)
    for name, key in BAD_KEYS.items():
        with pytest.raises(InvalidKeyError):
            CALLS[call](cache, key)
        assert server_counters(clean_memcached_servers) == before, name
    assert cache.get("other") == "stays"
    assert cache.get("planted") is None


def test_the_client_api_answers_bad_keys_with_typed_errors_and_no_io(
    cache: Cache, clean_memcached_servers: MemcachedServers
) -> None:
    client = cache.topology.client  # type: ignore[attr-defined]
    shard = client.manager.get_all_shards()[0]
    before = server_counters(clean_memcached_servers)
    for key in BAD_KEYS.values():
        for response in (client.get(key), client.gets(key), client.delete(key)):
            assert isinstance(response.error, InvalidKeyError)
        assert isinstance(client.increment(key, 1).error, InvalidKeyError)
        with pytest.raises(InvalidKeyError):
            client.remaining_ttl(shard, key.encode())  # the raw meta command's path
        with pytest.raises(InvalidKeyError):
            shard.call("get", key.encode())  # the one place every call goes through
    with pytest.raises(InvalidKeyError):
        shard.call("raw_command", b"flush_all")  # no raw line from anywhere
    assert server_counters(clean_memcached_servers) == before


def test_incr_failures_are_typed_errors_on_memcache(cache: Cache) -> None:
    cache.set("text", "abc")
    with pytest.raises(NotAnIntegerError):
        cache.incr("text")
    assert cache.incr("n", 2**64, create=True) == 2**64  # past memcached's counters
    cache.set("n", 1)
    assert cache.incr("n", 2**63) == 2**63 + 1
    assert cache.decr("n", 2**63) == 1
    with pytest.raises(TypeError, match="not a memcache operation"):  # never a silent incr
        cache.topology.shard_for(b"n").execute(b"EVALSHA", b"0" * 40, 1, b"n", 1)
