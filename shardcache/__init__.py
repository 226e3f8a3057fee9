"""shardcache: caches and versioned records on sharded Redis and memcached."""

__version__ = "0.1.0"
