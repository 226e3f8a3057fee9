from django.apps import AppConfig


class ShardcacheConfig(AppConfig):
    """Add ``"shardcache_django"`` to INSTALLED_APPS for the ``CACHES`` system checks."""

    name = "shardcache_django"
    verbose_name = "shardcache"

    def ready(self) -> None:
        from shardcache_django import checks  # noqa: F401  (registers the checks)
