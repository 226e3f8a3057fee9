"""Cache on a Sentinel-managed master against redis-py's ``Sentinel.master_for``, interleaved.

    python -m bench sentinel [--seconds S] [--rounds R]

Both sides talk to the same master (``bucket0`` of the local sentinel set): ours through
`SentinelClient`'s lean pool, redis-py's through its ``SentinelConnectionPool``.

Targets (ratios): get and set >= 1.6x.
"""

from __future__ import annotations

from redis.sentinel import Sentinel

from bench.harness import compare, slice_options
from shardcache import Cache, SentinelClient
from shardcache.testing import RedisSentinel

TARGETS = {"get": 1.6, "set": 1.6}
VALUE = "v" * 64


def main(argv: list[str] | None = None) -> None:
    args = slice_options("sentinel", __doc__, argv)

    with RedisSentinel(["bucket0"]) as setup:
        client = SentinelClient(setup.sentinel_addresses, ["bucket0"])
        cache = Cache(client, prefix="b:")
        theirs = Sentinel(setup.sentinel_addresses).master_for("bucket0")
        keys = [f"key:{i}" for i in range(100)]
        raw_keys = [f"raw:{key}" for key in keys]
        mapping = dict.fromkeys(keys, VALUE)
        cache.set_many(mapping)
        theirs.mset(dict.fromkeys(raw_keys, VALUE))

        def their_set_many() -> None:
            pipe = theirs.pipeline(transaction=False)
            for key in raw_keys:
                pipe.set(key, VALUE)
            pipe.execute()

        compare(
            {
                "get": (lambda: cache.get("key:7"), lambda: theirs.get("raw:key:7")),
                "set": (
                    lambda: cache.set("key:7", VALUE),
                    lambda: theirs.set("raw:key:7", VALUE),
                ),
                "get_many(100)": (lambda: cache.get_many(keys), lambda: theirs.mget(raw_keys)),
                "set_many(100)": (lambda: cache.set_many(mapping), their_set_many),
            },
            theirs="redis-py Sentinel",
            targets=TARGETS,
            seconds=args.seconds,
            rounds=args.rounds,
        )
        theirs.close()
        client.close()


if __name__ == "__main__":
    main()
