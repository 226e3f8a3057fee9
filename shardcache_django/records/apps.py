from django.apps import AppConfig


class RecordsConfig(AppConfig):
    """``INSTALLED_APPS += ["shardcache_django.records"]``: the ORM record store's tables,
    ``stores``, the ``shardcache_records`` command and the SHARDCACHE_RECORDS checks."""

    name = "shardcache_django.records"
    label = "shardcache_records"
    verbose_name = "shardcache records"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from shardcache_django.records import checks  # noqa: F401  (registers the checks)
