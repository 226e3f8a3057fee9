"""Settings of the example Django project. The database is SQLite (``SHARDCACHE_EXAMPLE_DB``,
else ``example.sqlite3`` here): the record store's default ORM backend needs no server."""

from __future__ import annotations

import os
from pathlib import Path

SECRET_KEY = "shardcache-example-not-secret"
DEBUG = True
INSTALLED_APPS = ["shardcache_django", "shardcache_django.records"]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "SHARDCACHE_EXAMPLE_DB", str(Path(__file__).resolve().parent / "example.sqlite3")
        ),
    }
}
USE_TZ = True
# No SHARDCACHE_RECORDS: stores["default"] is the ORM store on the database above.
