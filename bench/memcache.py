"""The sharded memcache client against pymemcache's ``HashClient`` on the same 3 servers.

    python -m bench memcache [--seconds S] [--rounds R]

Both sides store raw bytes (no serializer): ``get`` / ``set`` of one key, and
``get_multi`` / ``set_multi`` of 100 keys spread over the 3 servers.

Targets (ratios): get and set >= 1.8x HashClient; get_multi(100) >= 3x.
"""

from __future__ import annotations

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from bench.harness import compare, slice_options
from shardcache import Item, ShardedMemcacheClient, StaticShardManager
from shardcache.testing import MemcachedServers

TARGETS = {"get": 1.8, "set": 1.8, "get_multi(100)": 3.0}
VALUE = b"v" * 64


def main(argv: list[str] | None = None) -> None:
    args = slice_options("memcache", __doc__, argv)

    with MemcachedServers(3) as servers:
        ours = ShardedMemcacheClient(StaticShardManager(servers.addresses))
        # default_noreply=False: both sides wait for "STORED", as a caller who wants to
        # know whether a write happened must (pymemcache's default does not wait).
        theirs = HashClient(
            [(s.host, s.port) for s in servers.servers],
            use_pooling=True,
            no_delay=True,
            default_noreply=False,
        )
        keys = [f"key:{i}".encode() for i in range(100)]
        raw_keys = [b"raw:" + key for key in keys]
        items = [Item(key, VALUE) for key in keys]
        raw_mapping = dict.fromkeys(raw_keys, VALUE)
        ours.set_multi(items)
        theirs.set_many(raw_mapping)
        assert all(r.value == VALUE for r in ours.get_multi(keys).values())
        assert theirs.get_many(raw_keys) == raw_mapping

        # The floor: a plain pymemcache Client on the server of the key, with no routing.
        plain = Client(servers.servers[0].address, no_delay=True, default_noreply=False)
        plain_key = next(k for k in keys if ours.manager.get_shard(k).index == 0)  # type: ignore[union-attr]

        compare(
            {
                "get": (lambda: ours.get(plain_key), lambda: theirs.get(b"raw:" + plain_key)),
                "set": (
                    lambda: ours.set(Item(plain_key, VALUE)),
                    lambda: theirs.set(b"raw:" + plain_key, VALUE),
                ),
                "get_multi(100)": (
                    lambda: ours.get_multi(keys),
                    lambda: theirs.get_many(raw_keys),
                ),
                "set_multi(100)": (
                    lambda: ours.set_multi(items),
                    lambda: theirs.set_many(raw_mapping),
                ),
            },
            theirs="pymemcache HashClient",
            targets=TARGETS,
            floors={
                "get": lambda: plain.get(plain_key),
                "set": lambda: plain.set(plain_key, VALUE),
            },
            seconds=args.seconds,
            rounds=args.rounds,
        )
        plain.close()
        theirs.close()
        ours.close()


if __name__ == "__main__":
    main()
