"""The record store as a Django app: ``INSTALLED_APPS += ["shardcache_django.records"]``.

    from shardcache_django.records import stores
    store = stores["default"]  # SHARDCACHE_RECORDS["default"]; the ORM store when unset

``python manage.py shardcache_records --help`` inspects leases, records and changes.
"""

from shardcache_django.records.handler import StoreHandler, stores

__all__ = ["StoreHandler", "stores"]
