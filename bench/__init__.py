"""shardcache benchmarks: ``python -m bench [cache|cluster|sentinel|startup] [options]``."""
