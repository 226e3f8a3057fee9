"""Minimal Django settings for the tests; each test class installs its own CACHES.

The test database is an SQLite file (not Django's shared in-memory one, whose table locks
do not wait): the record store's tests write to it from many threads and processes.
"""

import os
import tempfile

SECRET_KEY = "shardcache-tests"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "shardcache_django",
    "shardcache_django.records",
    "example_project.shop",  # the example site's templates (tests/test_examples.py)
]
_DB = os.path.join(tempfile.gettempdir(), f"shardcache-tests-{os.getpid()}.sqlite3")
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": _DB,
        "TEST": {"NAME": _DB},
        "OPTIONS": {"timeout": 60},
    }
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
USE_TZ = True
