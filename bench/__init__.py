"""shardcache benchmarks: ``python -m bench [cache|cluster|startup] [options]``."""
