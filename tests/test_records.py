"""The record store conformance suite on every store: in memory, and on Redis as a hash pool
of standalone servers, a cluster, and sentinel-managed masters."""

from __future__ import annotations

import sys
import uuid
from typing import Any

import pytest

from shardcache import Cluster, HashPool, SentinelClient
from shardcache.records import (
    Encryption,
    InvalidRecordError,
    MemoryRecordStore,
    Record,
    RedisRecordStore,
)
from shardcache.records.model import RecordCodec, head
from shardcache.testing import RedisCluster, RedisSentinel, StandaloneRedis
from tests.record_contract import KEY_A, RecordStoreContract

WRITER = """
import sys
from shardcache import {cls}
from shardcache.records import Record, RedisRecordStore
store = RedisRecordStore({cls}({args!r}{extra}), name={name!r})
for i in range(int(sys.argv[1])):
    store.put([Record("remote", f"w{{i}}", {{"i": i}})])
store.close()
"""


class TestMemoryRecordStore(RecordStoreContract):
    def make_store(self, **options: Any) -> Any:
        return MemoryRecordStore(**options)


class RedisContract(RecordStoreContract):
    topology_class: str
    extra = ""

    @pytest.fixture(autouse=True)
    def _name(self) -> None:
        self.name = f"records-{uuid.uuid4().hex[:8]}"

    def topology(self) -> Any:
        raise NotImplementedError

    def topology_args(self) -> Any:
        raise NotImplementedError

    def make_store(self, **options: Any) -> Any:
        return RedisRecordStore(self.topology(), name=self.name, **options)

    def writer_command(self, count: int) -> list[str]:
        code = WRITER.format(
            cls=self.topology_class, args=self.topology_args(), extra=self.extra, name=self.name
        )
        return [sys.executable, "-c", code, str(count)]


class TestRedisRecordStoreOnAHashPool(RedisContract):
    topology_class = "HashPool"

    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_pool_servers: StandaloneRedis) -> None:
        self.urls = clean_redis_pool_servers.urls

    def topology(self) -> Any:
        return HashPool(self.urls)

    def topology_args(self) -> Any:
        return self.urls


class TestRedisRecordStoreOnACluster(RedisContract):
    topology_class = "Cluster"

    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_cluster: RedisCluster) -> None:
        self.nodes = [node.address for node in clean_redis_cluster.nodes[:2]]

    def topology(self) -> Any:
        return Cluster(self.nodes)

    def topology_args(self) -> Any:
        return self.nodes


class TestRedisRecordStoreOnSentinels(RedisContract):
    topology_class = "SentinelClient"
    extra = ", ['bucket0', 'bucket1']"

    @pytest.fixture(autouse=True)
    def _servers(self, clean_redis_sentinel: RedisSentinel) -> None:
        self.sentinels = [f"{h}:{p}" for h, p in clean_redis_sentinel.sentinel_addresses]

    def topology(self) -> Any:
        return SentinelClient(self.sentinels, ["bucket0", "bucket1"])

    def topology_args(self) -> Any:
        return self.sentinels


def test_a_sealed_record_moved_to_another_version_or_record_does_not_decrypt() -> None:
    codec = RecordCodec(Encryption([KEY_A]))
    rest = codec.rest(Record("secret", "s1", {"pin": "1234"}), version=7)
    assert codec.decode(head(7, 0) + rest).data == {"pin": "1234"}
    with pytest.raises(InvalidRecordError):
        codec.decode(head(8, 0) + rest)  # an old ciphertext put back under a newer version
    with pytest.raises(InvalidRecordError):
        codec.decode(head(7, 0) + rest.replace('"i":"s1"', '"i":"s2"'))  # another record
    ambiguous = codec.rest(Record("a\x00b", "c", {"x": 1}), version=1)
    with pytest.raises(InvalidRecordError):  # type and id are length-prefixed
        codec.decode(
            head(1, 0) + ambiguous.replace('"t":"a\\u0000b","i":"c"', '"t":"a","i":"b\\u0000c"')
        )


def test_the_redis_store_refuses_a_topology_without_scripts(
    clean_memcached_servers: Any,
) -> None:
    from shardcache import (
        ConfigurationError,
        MemcacheTopology,
        ShardedMemcacheClient,
        StaticShardManager,
    )

    client = ShardedMemcacheClient(StaticShardManager(clean_memcached_servers.addresses))
    with pytest.raises(ConfigurationError, match="Lua script"):
        RedisRecordStore(MemcacheTopology(client))
    client.close()
