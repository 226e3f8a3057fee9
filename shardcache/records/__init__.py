"""The versioned record store: put / get / sync / sync_latest / patch / lease / options.

    store = RedisRecordStore(Cluster(["redis://node-a:7000"]))
    server_version = store.put([Record("session", "s1", {"user": "ada"})])
    server_version, version, current = store.sync_latest("session")
    for change in store.sync("session", server_version, version, wait=True):
        ...

Stores: `MemoryRecordStore` (this process), `RedisRecordStore` (any Redis topology), and
the Django ORM store in ``shardcache_django.records``. They pass one conformance suite.
"""

from shardcache.errors import (
    InvalidRecordError,
    InvalidRecordVersion,
    InvalidServerVersion,
    LeaseError,
    RecordError,
    RecordNotFound,
)
from shardcache.records.base import BaseRecordStore, Commit, Lease, RecordStore, Waiter
from shardcache.records.memory import MemoryRecordStore
from shardcache.records.model import Encryption, Options, Record, compile_filter
from shardcache.records.redis import RedisRecordStore

__all__ = [
    "BaseRecordStore",
    "Commit",
    "Encryption",
    "InvalidRecordError",
    "InvalidRecordVersion",
    "InvalidServerVersion",
    "Lease",
    "LeaseError",
    "MemoryRecordStore",
    "Options",
    "Record",
    "RecordError",
    "RecordNotFound",
    "RecordStore",
    "RedisRecordStore",
    "Waiter",
    "compile_filter",
]
