"""shardcache benchmarks: ``python -m bench [cache|startup] [options]``."""
