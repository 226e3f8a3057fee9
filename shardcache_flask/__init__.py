"""shardcache for Flask: Flask-Caching backends per topology (``CACHE_TYPE`` import paths).

    CACHE_TYPE = "shardcache_flask.ShardedRedisCache"   # or RedisClusterCache,
                                                        # RedisSentinelCache, ShardedMemcacheCache

The backends adapt Flask-Caching's ``factory(app, config, args, kwargs)`` contract and
cachelib's return conventions to the framework-agnostic core in `shardcache`.
"""

from shardcache_flask.cache import (
    RedisClusterCache,
    RedisSentinelCache,
    ShardedMemcacheCache,
    ShardedRedisCache,
    computed,
    get_redis_client,
)

__all__ = [
    "RedisClusterCache",
    "RedisSentinelCache",
    "ShardedMemcacheCache",
    "ShardedRedisCache",
    "computed",
    "get_redis_client",
]
