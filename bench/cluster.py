"""Cache on the local 6-node Redis Cluster against redis-py's ``RedisCluster``, interleaved.

    python -m bench cluster [--seconds S] [--rounds R]

redis-py's side is what its users write: ``RedisCluster.get`` / ``set``, and
``mget_nonatomic`` / ``mset_nonatomic`` for 100 keys spread over the slots.

Targets (ratios): get and set >= 2.5x; get_many(100) >= 4x mget_nonatomic.
"""

from __future__ import annotations

from redis.cluster import ClusterNode as RedisPyNode
from redis.cluster import RedisCluster as RedisPyCluster

from bench.harness import compare, slice_options
from shardcache import Cache, Cluster
from shardcache.testing import RedisCluster

TARGETS = {"get": 2.5, "set": 2.5, "get_many(100)": 4.0}
VALUE = "v" * 64


def main(argv: list[str] | None = None) -> None:
    args = slice_options("cluster", __doc__, argv)

    with RedisCluster() as local:
        host, port = local.startup_nodes[0]
        cluster = Cluster([f"{host}:{port}"])
        cache = Cache(cluster, prefix="b:")
        theirs = RedisPyCluster(startup_nodes=[RedisPyNode(host, port)])
        keys = [f"key:{i}" for i in range(100)]
        raw_keys = [f"raw:{key}" for key in keys]
        mapping = dict.fromkeys(keys, VALUE)
        raw_mapping = dict.fromkeys(raw_keys, VALUE)
        cache.set_many(mapping)
        theirs.mset_nonatomic(raw_mapping)
        assert cache.get_many(keys) == mapping
        assert theirs.mget_nonatomic(raw_keys) == [VALUE.encode()] * 100

        compare(
            {
                "get": (lambda: cache.get("key:7"), lambda: theirs.get("raw:key:7")),
                "set": (
                    lambda: cache.set("key:7", VALUE),
                    lambda: theirs.set("raw:key:7", VALUE),
                ),
                "get_many(100)": (
                    lambda: cache.get_many(keys),
                    lambda: theirs.mget_nonatomic(raw_keys),
                ),
                "set_many(100)": (
                    lambda: cache.set_many(mapping),
                    lambda: theirs.mset_nonatomic(raw_mapping),
                ),
            },
            theirs="redis-py RedisCluster",
            targets=TARGETS,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        theirs.close()
        cluster.close()


if __name__ == "__main__":
    main()
