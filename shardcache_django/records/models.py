"""Tables of the ORM record store; ``namespace`` lets several stores share them."""

from __future__ import annotations

from django.db import models


class StoreState(models.Model):
    """One row per store: versions, and the row writers lock to take turns."""

    namespace = models.CharField(max_length=100, primary_key=True)
    server_version = models.BigIntegerField()
    last_version = models.BigIntegerField(default=0)
    trimmed = models.BigIntegerField(default=0)  # the highest version dropped from the log


class CurrentRecord(models.Model):
    """The current (not deleted) records."""

    namespace = models.CharField(max_length=100)
    type = models.CharField(max_length=200)
    record_id = models.CharField(max_length=255)
    version = models.BigIntegerField()
    modified_ms = models.BigIntegerField()
    stored = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["namespace", "type", "record_id"], name="shardcache_record_unique"
            )
        ]
        indexes = [models.Index(fields=["namespace", "type", "version"])]


class Change(models.Model):
    """The change log: every write and tombstone, by version."""

    namespace = models.CharField(max_length=100)
    type = models.CharField(max_length=200)
    version = models.BigIntegerField()
    modified_ms = models.BigIntegerField()
    stored = models.TextField()

    class Meta:
        indexes = [
            models.Index(fields=["namespace", "type", "version"]),
            models.Index(fields=["namespace", "version"]),
        ]


class Lease(models.Model):
    namespace = models.CharField(max_length=100)
    name = models.CharField(max_length=200)
    holder_id = models.CharField(max_length=200)
    expires_ms = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "name"], name="shardcache_lease_unique")
        ]


class TypeOptions(models.Model):
    namespace = models.CharField(max_length=100)
    type = models.CharField(max_length=200)
    encoded = models.CharField(max_length=100)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["namespace", "type"], name="shardcache_options_unique")
        ]
