"""shardcache benchmarks: ``python -m bench [cache|cluster|sentinel|memcache|startup]``."""
