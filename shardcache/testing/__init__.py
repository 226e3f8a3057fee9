"""Real local servers for tests, demos and users' own test suites.

Every topology starts real processes on free 127.0.0.1 ports (never the default ones), each
in its own temporary directory with persistence off, and always stops them: on `stop`, at
interpreter exit, on SIGTERM/SIGHUP, and (via the parent-death signal) even on ``kill -9``::

    from shardcache.testing import RedisCluster

    with RedisCluster() as cluster:          # 3 masters + 3 replicas, ready when it returns
        print(cluster.startup_nodes)

The pytest plugin (`shardcache.testing.pytest_plugin`) exposes them as fixtures, and
``python -m shardcache.testing up|status|down`` runs them in the background.
"""

from shardcache.testing._base import HealthRow, StartStop, Topology
from shardcache.testing._process import ServerProcess, find_binary, pick_port, wait_until
from shardcache.testing.cluster import ClusterNodeView, RedisCluster, SlotMigration
from shardcache.testing.local import LocalTopology, format_health
from shardcache.testing.sentinel import RedisSentinel
from shardcache.testing.servers import MemcachedServer, RedisServer, SentinelServer
from shardcache.testing.standalone import MemcachedServers, StandaloneRedis

__all__ = [
    "ClusterNodeView",
    "HealthRow",
    "LocalTopology",
    "MemcachedServer",
    "MemcachedServers",
    "RedisCluster",
    "RedisSentinel",
    "RedisServer",
    "SentinelServer",
    "ServerProcess",
    "SlotMigration",
    "StandaloneRedis",
    "StartStop",
    "Topology",
    "find_binary",
    "format_health",
    "pick_port",
    "wait_until",
]
