"""shardcache for Django: ``CACHES`` backends per topology and the record-store app.

The backends (``shardcache_django.cache``) and the app (``shardcache_django.records``) are
built on the framework-agnostic core in `shardcache`; this package only adapts Django's
conventions (key making, timeouts, settings, system checks) to it.
"""
