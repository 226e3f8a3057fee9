"""The shardcache demo: every topology on real local servers, shown working, then stopped.

Run it with ``./dev demo``. It brings up the local set that the example Django project and
Flask app run on (3 standalone redis, a 6-node Redis Cluster, two Sentinel-managed masters,
3 memcached), prints their addresses and a health table, sends writes and reads through each
topology, and stops everything. The exit status is 0 only if every step worked.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from shardcache.testing import LocalTopology, MemcachedServers, StandaloneRedis, format_health
from shardcache.testing import RedisCluster as LocalCluster
from shardcache.testing import RedisSentinel as LocalSentinel


def standalone_round_trip(pool: StandaloneRedis) -> str:
    for i, url in enumerate(pool.urls):
        with redis.Redis.from_url(url, decode_responses=True) as conn:
            conn.set("demo:hello", f"shard {i}")
            assert conn.get("demo:hello") == f"shard {i}"
    return f"set+get on each of {len(pool.urls)} servers"


def cluster_round_trip(cluster: LocalCluster) -> str:
    host, port = cluster.startup_nodes[0]
    client = RedisCluster(startup_nodes=[ClusterNode(host, port)], decode_responses=True)
    try:
        keys = [f"demo:{i}" for i in range(300)]
        for key in keys:
            client.set(key, key)
        assert all(client.get(key) == key for key in keys)
        per_node = Counter(client.get_node_from_key(key).port for key in keys)
    finally:
        client.close()
    spread = ", ".join(f":{port}={count}" for port, count in sorted(per_node.items()))
    return f"{len(keys)} keys over {len(per_node)} masters ({spread})"


def sentinel_round_trip(setup: LocalSentinel) -> str:
    sentinel = Sentinel(setup.sentinel_addresses, socket_timeout=2)
    found = []
    for name in setup.names:
        master = sentinel.master_for(name, decode_responses=True)
        master.set("demo:hello", name)
        assert master.get("demo:hello") == name
        host, port = sentinel.discover_master(name)
        found.append(f"{name}->{host}:{port}")
    return "via sentinel: " + ", ".join(found)


def memcached_round_trip(servers: MemcachedServers) -> str:
    for i, server in enumerate(servers.servers):
        conn = server.client()
        try:
            conn.set("demo:hello", f"shard {i}".encode())
            assert conn.get("demo:hello") == f"shard {i}".encode()
        finally:
            conn.close()
    return f"set+get on each of {len(servers.servers)} servers"


def step(name: str, action: Callable[[], str]) -> bool:
    began = time.perf_counter()
    try:
        result = action()
    except Exception as exc:  # the demo reports every failure and carries on
        print(f"  FAIL  {name:<10} {exc!r}")
        return False
    print(f"  ok    {name:<10} {result}  ({(time.perf_counter() - began) * 1000:.1f} ms)")
    return True


def main() -> int:
    print("shardcache demo: starting the local servers ...")
    with LocalTopology() as local:
        print(f"19 servers ready in {local.startup_seconds:.1f}s\n")
        rows = local.health()
        print(format_health(rows))
        print("\nround trips:")
        results = [
            all(row.ok for row in rows),
            step("standalone", lambda: standalone_round_trip(local.standalone)),
            step("cluster", lambda: cluster_round_trip(local.cluster)),
            step("sentinel", lambda: sentinel_round_trip(local.sentinel)),
            step("memcached", lambda: memcached_round_trip(local.memcached)),
        ]
        print("\nstopping ...")
    print("done: every server healthy, every step worked" if all(results) else "done: FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
