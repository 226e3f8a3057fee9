"""The topologies: which server holds a key, and how to talk to it."""

from shardcache.topologies.hashpool import HashPool

__all__ = ["HashPool"]
