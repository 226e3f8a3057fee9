"""Cache on a 3-server HashPool against raw redis-py on the same servers, interleaved.

    python -m bench cache [--seconds S] [--rounds R]

Each operation runs in alternating slices (ours, redis-py, ours, ...) so that both see the
same machine load; the median slice rate of each side is printed with their ratio. The
baselines are what a user would otherwise write: ``redis.Redis.get`` / ``set`` on one
server, one ``MGET`` of the same 100 keys on a single server, and a pipeline of 100 ``SET``.
For get and set, the last column is the floor: a bare redis-py ``Connection`` doing
``send_command`` + ``read_response``, the fastest any client built on redis-py can go (our
ratio to it shows how much of the round trip is still ours).

Targets (ratios): get and set >= 1.6x; get_many(100) over 3 shards >= 1.2x.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection

from bench.harness import compare, slice_options
from shardcache import Cache, HashPool
from shardcache.testing import StandaloneRedis

TARGETS = {"get": 1.6, "set": 1.6, "get_many(100)": 1.2}
VALUE = "v" * 64


def main(argv: list[str] | None = None) -> None:
    args = slice_options("cache", __doc__, argv)

    with StandaloneRedis(3) as servers:
        pool = HashPool(servers.urls)
        cache = Cache(pool, prefix="b:")
        raw = redis.Redis.from_url(servers.urls[0])
        keys = [f"key:{i}" for i in range(100)]
        raw_keys = [f"raw:{key}" for key in keys]
        mapping = dict.fromkeys(keys, VALUE)
        cache.set_many(mapping)
        raw.mset({key: VALUE.encode() for key in raw_keys})
        assert cache.get_many(keys) == mapping  # both sides read real data

        def raw_set_many() -> None:
            pipe = raw.pipeline(transaction=False)
            for key in raw_keys:
                pipe.set(key, VALUE)
            pipe.execute()

        floor = Connection(host="127.0.0.1", port=servers.servers[0].port)

        def floor_get() -> Any:
            floor.send_command("GET", "raw:key:7")
            return floor.read_response()

        def floor_set() -> Any:
            floor.send_command("SET", "raw:key:7", VALUE)
            return floor.read_response()

        floors: dict[str, Callable[[], Any]] = {"get": floor_get, "set": floor_set}
        compare(
            {
                "get": (lambda: cache.get("key:7"), lambda: raw.get("raw:key:7")),
                "set": (lambda: cache.set("key:7", VALUE), lambda: raw.set("raw:key:7", VALUE)),
                "get_many(100)": (lambda: cache.get_many(keys), lambda: raw.mget(raw_keys)),
                "set_many(100)": (lambda: cache.set_many(mapping), raw_set_many),
            },
            theirs="redis-py Redis",
            targets=TARGETS,
            floors=floors,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        floor.disconnect()
        raw.close()
        pool.close()


if __name__ == "__main__":
    main()
