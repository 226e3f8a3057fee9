"""Settings of the example Django project: four shardcache caches, sessions in the cache,
and the record store.

The servers come from the environment, or from the state file of ``./dev up``
(`example_project.servers`). The database is SQLite (``SHARDCACHE_EXAMPLE_DB``, else
``example.sqlite3`` here); ``SHARDCACHE_EXAMPLE_RECORDS=redis`` keeps the records on the
cluster instead of in the ORM store.
"""

from __future__ import annotations

import os
from pathlib import Path

from example_project.servers import servers

SERVERS = servers()

SECRET_KEY = "shardcache-example-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
ROOT_URLCONF = "example_project.site.urls"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "shardcache_django",
    "shardcache_django.records",
    "example_project.shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "SHARDCACHE_EXAMPLE_DB", str(Path(__file__).resolve().parent / "example.sqlite3")
        ),
    }
}
USE_TZ = True

CACHES = {
    # A Redis Cluster: the low-level API and template fragments.
    "default": {
        "BACKEND": "shardcache_django.cache.RedisClusterCache",
        "LOCATION": SERVERS.cluster_nodes,
        "KEY_PREFIX": "shop",
        "OPTIONS": {"COMPRESSOR": "zlib", "SOCKET_TIMEOUT": 1, "RETRY_TIMEOUT": 1},
    },
    # Sentinel-managed masters: the sessions, which must outlive a failover.
    "sessions": {
        "BACKEND": "shardcache_django.cache.RedisSentinelCache",
        "LOCATION": SERVERS.sentinels,
        "OPTIONS": {"MASTERS": SERVERS.sentinel_masters, "SOCKET_TIMEOUT": 1},
    },
    # Independent Redis servers, keys hashed over them: whole pages (cache_page).
    "pool": {
        "BACKEND": "shardcache_django.cache.ShardedRedisCache",
        "LOCATION": SERVERS.redis_urls,
        "KEY_PREFIX": "pages",
        "OPTIONS": {"HASH": "ketama"},
    },
    # memcached with shard states: cheap, lossy, fine for recomputable values.
    "memcache": {
        "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
        "LOCATION": SERVERS.memcached,
        "KEY_PREFIX": "shop",
        "OPTIONS": {"IGNORE_ERRORS": True},
    },
}
SESSION_ENGINE = "django.contrib.sessions.backends.cache"
SESSION_CACHE_ALIAS = "sessions"

if os.environ.get("SHARDCACHE_EXAMPLE_RECORDS") == "redis":
    SHARDCACHE_RECORDS = {
        "default": {
            "BACKEND": "redis",
            "LOCATION": SERVERS.cluster_nodes,
            "OPTIONS": {"TOPOLOGY": "cluster", "NAME": "shop"},
        }
    }
# Otherwise no SHARDCACHE_RECORDS: stores["default"] is the ORM store on the database above.
