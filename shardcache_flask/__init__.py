"""shardcache for Flask: Flask-Caching backends per topology (``CACHE_TYPE`` import paths).

The backends adapt Flask-Caching's ``factory(app, config, args, kwargs)`` contract and
cachelib's return conventions to the framework-agnostic core in `shardcache`.
"""
