"""Minimal Django settings for the tests; each test class installs its own CACHES."""

SECRET_KEY = "shardcache-tests"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shardcache_django"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
USE_TZ = True
