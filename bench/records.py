"""The record store: put throughput, get, and a sync of many changes, on Redis and the ORM.

    python -m bench records [--changes N] [--seconds S]

Redis: `RedisRecordStore` on one local redis-server. ORM: the Django app's store on an
SQLite file. For each: puts of 1 record and of batches of 100 (records/s), gets (ops/s),
then ``--changes`` changes (100,000 by default) written in batches and read back by one
``sync`` from version 0, with the records/s and the peak memory Python allocated while
iterating (tracemalloc), next to the size of all the stored changes: a streaming sync
stays far below it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from shardcache import HashPool
from shardcache.records import Record, RedisRecordStore
from shardcache.testing import StandaloneRedis

DATA = {"user": "ada", "roles": ["admin", "dev"], "active": True, "n": 0}


def rate(fn: Callable[[], int], seconds: float) -> float:
    """Records per second of ``fn`` (which returns how many records it handled)."""
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        done += fn()
    return done / (time.perf_counter() - began)


def measure(name: str, store: Any, changes: int, seconds: float) -> None:
    counter = iter(range(10**9))

    def put_one() -> int:
        store.put([Record("one", f"r{next(counter) % 1000}", DATA)])
        return 1

    def put_hundred() -> int:
        base = next(counter)
        store.put([Record("batch", f"r{(base + i) % 5000}", DATA) for i in range(100)])
        return 100

    def get() -> int:
        store.get("one", "r1")
        return 1

    print(f"\n{name}")
    print(f"  put, 1 record per call      {rate(put_one, seconds):>10,.0f} records/s")
    print(f"  put, 100 records per call   {rate(put_hundred, seconds):>10,.0f} records/s")
    print(f"  get                         {rate(get, seconds):>10,.0f} ops/s")
    server_version = 0
    for start in range(0, changes, 1000):
        batch = [Record("big", f"b{start + i}", {**DATA, "n": start + i}) for i in range(1000)]
        server_version = store.put(batch)
    stored, after = 0, 0
    while page := store._changes("big", server_version, after, 10_000):  # sizes only
        stored += sum(len(raw) for raw in page)
        after = json.loads(page[-1])["v"]
    tracemalloc.start()
    began = time.perf_counter()
    seen = sum(1 for _ in store.sync("big", server_version, 0))
    elapsed = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert seen == changes, (seen, changes)
    print(
        f"  sync of {changes:,} changes   {changes / elapsed:>10,.0f} records/s, peak "
        f"{peak / 2**20:.1f} MiB while iterating (all changes: ~{stored / 2**20:.0f} MiB stored)"
    )


def orm_store() -> Any:
    import django
    from django.conf import settings
    from django.core.management import call_command

    path = os.path.join(tempfile.mkdtemp(prefix="shardcache-bench-"), "records.sqlite3")
    settings.configure(
        INSTALLED_APPS=["shardcache_django.records"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": path}},
        USE_TZ=True,
    )
    django.setup()
    call_command("migrate", verbosity=0)
    from shardcache_django.records.orm import OrmRecordStore

    return OrmRecordStore()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench records", description=__doc__)
    parser.add_argument("--changes", type=int, default=100_000, help="changes to sync")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each rate run")
    args = parser.parse_args(argv)
    with StandaloneRedis(1) as servers:
        store = RedisRecordStore(HashPool(servers.urls), name="bench")
        measure("Redis (RedisRecordStore, one redis-server)", store, args.changes, args.seconds)
        store.close()
    measure("ORM (OrmRecordStore, SQLite file)", orm_store(), args.changes, args.seconds)


if __name__ == "__main__":
    main()
