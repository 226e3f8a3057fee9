"""The topologies: which server holds a key, and how to talk to it."""

from shardcache.topologies.cluster import Binding, Cluster, ClusterNode
from shardcache.topologies.hashpool import HashPool
from shardcache.topologies.redirects import (
    Redirect,
    RedirectPolicy,
    is_ask,
    is_cross_slot,
    is_moved,
    is_tryagain,
    parse_redirect,
)
from shardcache.topologies.sentinel import SentinelClient, SentinelMaster

__all__ = [
    "Binding",
    "Cluster",
    "ClusterNode",
    "HashPool",
    "Redirect",
    "RedirectPolicy",
    "SentinelClient",
    "SentinelMaster",
    "is_ask",
    "is_cross_slot",
    "is_moved",
    "is_tryagain",
    "parse_redirect",
]
