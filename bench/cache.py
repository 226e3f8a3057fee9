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

import pickle
import socket
import statistics
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection

from bench.harness import compare, cost_per_call, slice_options
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
        cpu_floor(cache, pool, keys, servers, args.seconds, args.rounds)
        raw.close()
        pool.close()


def cpu_floor(
    cache: Cache,
    pool: HashPool,
    keys: list[str],
    servers: StandaloneRedis,
    seconds: float,
    rounds: int,
) -> None:
    """Client CPU per call against the floor of any Python client: one plain socket per
    server, hiredis to pack and read, pickle.loads of each value, no pool, no checks."""
    import hiredis

    sockets = []
    for server in servers.servers:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sockets.append(sock)
    reader = hiredis.Reader()

    def read(sock: socket.socket) -> Any:
        reply = reader.gets()
        while reply is False:
            reader.feed(sock.recv(65536))
            reply = reader.gets()
        return reply

    one = cache.make_key("key:7")
    one_sock = sockets[pool.index(one)]
    pack = hiredis.pack_command
    by_server: dict[int, list[bytes]] = {}
    for key in keys:
        made = cache.make_key(key)
        by_server.setdefault(pool.index(made), []).append(made)
    runs = [(sockets[index], run) for index, run in by_server.items()]

    # Packing is part of the floor (every client packs each call); choosing the server and
    # encoding the keys are not (done once above).
    def floor_get() -> Any:
        command: Any = (b"GET", one)
        one_sock.sendall(pack(command))
        return pickle.loads(read(one_sock)[1:])

    def floor_get_many() -> Any:
        for sock, run in runs:
            command: Any = (b"MGET", *run)
            sock.sendall(pack(command))
        return [pickle.loads(value[1:]) for sock, _ in runs for value in read(sock)]

    cases = {
        "get": (lambda: cache.get("key:7"), floor_get, 1.15),
        "get_many(100)": (lambda: cache.get_many(keys), floor_get_many, 1.3),
    }
    print()
    print(f"{'client CPU':<15}{'ours µs':>10}{'floor µs':>10}{'ratio':>8}{'limit':>8}", end="")
    print(f"{'ours wall µs':>15}{'floor wall µs':>15}")
    for name, (ours, floor, limit) in cases.items():
        costs: dict[str, list[tuple[float, float]]] = {"ours": [], "floor": []}
        for round_ in range(rounds):
            order = [("ours", ours), ("floor", floor)]
            for side, fn in order if round_ % 2 == 0 else reversed(order):
                costs[side].append(cost_per_call(fn, seconds))
        wall = {side: statistics.median(c[0] for c in runs) for side, runs in costs.items()}
        cpu = {side: statistics.median(c[1] for c in runs) for side, runs in costs.items()}
        ratio = cpu["ours"] / cpu["floor"]
        verdict = "ok" if ratio <= limit else "MISS"
        print(
            f"{name:<15}{cpu['ours']:>10.1f}{cpu['floor']:>10.1f}{ratio:>7.2f}x"
            f"{limit:>6.2f}x {verdict:<4}{wall['ours']:>12.1f}{wall['floor']:>15.1f}"
        )
    for sock in sockets:
        sock.close()


if __name__ == "__main__":
    main()
