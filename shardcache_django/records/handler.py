"""``SHARDCACHE_RECORDS``: parsed, checked and turned into stores (``stores["default"]``).

SHARDCACHE_RECORDS = {
    "default": {"BACKEND": "orm"},  # the default when the setting is absent
    "sessions": {
        "BACKEND": "redis",
        "LOCATION": ["redis://node-a:7000", "redis://node-b:7001"],
        "OPTIONS": {"TOPOLOGY": "cluster", "NAME": "sessions", "CHANGE_EXPIRY": 3600},
    },
}
"""

from __future__ import annotations

import base64
import binascii
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from shardcache.backends import OPTIONS as TOPOLOGY_OPTIONS
from shardcache.backends import problems as topology_problems
from shardcache.config import import_string
from shardcache.errors import ConfigurationError
from shardcache.records import MemoryRecordStore, RedisRecordStore
from shardcache.records.base import BaseRecordStore
from shardcache.registry import registry

__all__ = ["StoreHandler", "entries", "problems", "stores"]

DEFAULT = {"default": {"BACKEND": "orm"}}
_COMMON = {"CHANGE_EXPIRY", "PAGE_SIZE", "POLL_INTERVAL", "ENCRYPTION_KEYS"}
_OWN = {"orm": {"DATABASE", "NAMESPACE"}, "redis": {"TOPOLOGY", "NAME"}, "memory": set()}
_TOPOLOGIES = ("hashpool", "cluster", "sentinel")


def entries() -> dict[str, Any]:
    configured = getattr(settings, "SHARDCACHE_RECORDS", None)
    return dict(configured) if configured else dict(DEFAULT)


def problems(entry: Any) -> list[tuple[int, str]]:
    """What is wrong with one entry, as ``(check number, message)`` (no I/O)."""
    if not isinstance(entry, Mapping):
        return [(101, "an entry is a dict with BACKEND, LOCATION and OPTIONS")]
    backend = entry.get("BACKEND")
    options = dict(entry.get("OPTIONS") or {})
    if backend not in _OWN:
        if isinstance(backend, str) and "." in backend:
            try:
                import_string(backend)
            except ConfigurationError as exc:
                return [(101, str(exc))]
            return []
        return [(101, f"unknown BACKEND {backend!r}: orm, redis, memory or a dotted path")]
    found: list[tuple[int, str]] = []
    allowed = _COMMON | _OWN[backend]
    topology = str(options.get("TOPOLOGY", "hashpool"))
    if backend == "redis" and topology in _TOPOLOGIES:
        allowed |= TOPOLOGY_OPTIONS[topology]
    unknown = sorted(set(options) - allowed)
    if unknown:
        found.append((102, f"unknown OPTIONS {unknown}; this backend takes {sorted(allowed)}"))
    if backend == "redis":
        if topology not in _TOPOLOGIES:
            found.append((103, f"unknown TOPOLOGY {topology!r}: {', '.join(_TOPOLOGIES)}"))
        else:
            topo = {k: v for k, v in options.items() if k in TOPOLOGY_OPTIONS[topology]}
            found += [(103, m) for _, m in topology_problems(topology, entry.get("LOCATION"), topo)]
    if backend == "orm" and options.get("DATABASE", "default") not in settings.DATABASES:
        found.append((103, f"DATABASE {options['DATABASE']!r} is not in settings.DATABASES"))
    try:
        _store_options(options)
    except ConfigurationError as exc:
        found.append((104, str(exc)))
    return found


def _store_options(options: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("CHANGE_EXPIRY", "POLL_INTERVAL"):
        if name in options:
            out[name.lower()] = _number(name, options[name], float)
    if "PAGE_SIZE" in options:
        out["page_size"] = _number("PAGE_SIZE", options["PAGE_SIZE"], int)
    if options.get("ENCRYPTION_KEYS"):
        out["encryption_keys"] = _keys(options["ENCRYPTION_KEYS"])
    return out


def _number(name: str, value: Any, kind: type) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name} must be a number > 0, not {value!r}") from None
    if not number > 0:
        raise ConfigurationError(f"{name} must be a number > 0, not {value!r}")
    return number


def _keys(raw: Any) -> list[tuple[str, bytes]]:
    """``[(key_id, key), ...]``, each key bytes or base64 text of 16, 24 or 32 bytes."""
    keys = []
    for item in raw:
        try:
            key_id, key = item
            data = key if isinstance(key, bytes) else base64.b64decode(key, validate=True)
        except (TypeError, ValueError, binascii.Error):
            raise ConfigurationError(
                "ENCRYPTION_KEYS is a list of [key_id, key] (bytes or base64 text)"
            ) from None
        if len(data) not in (16, 24, 32):
            raise ConfigurationError(f"encryption key {key_id!r} must be 16, 24 or 32 bytes")
        keys.append((str(key_id), data))
    return keys


def build(alias: str, entry: Mapping[str, Any]) -> BaseRecordStore:
    found = problems(entry)
    if found:
        text = "; ".join(f"shardcache.E{n}: {m}" for n, m in found)
        raise ConfigurationError(f"SHARDCACHE_RECORDS[{alias!r}]: {text}")
    backend = entry["BACKEND"]
    options = dict(entry.get("OPTIONS") or {})
    kwargs = _store_options(options)
    if backend == "memory":
        return MemoryRecordStore(**kwargs)
    if backend == "orm":
        from shardcache_django.records.orm import OrmRecordStore

        return OrmRecordStore(
            using=options.get("DATABASE", "default"),
            namespace=str(options.get("NAMESPACE", alias)),
            **kwargs,
        )
    if backend == "redis":
        topology = str(options.get("TOPOLOGY", "hashpool"))
        topo = {k: v for k, v in options.items() if k in TOPOLOGY_OPTIONS[topology]}
        shared = registry.topology(topology, entry.get("LOCATION"), topo)
        return RedisRecordStore(shared, name=str(options.get("NAME", alias)), **kwargs)
    factory = import_string(backend)
    store: BaseRecordStore = factory(**{name.lower(): value for name, value in options.items()})
    return store


class StoreHandler:
    """``stores[alias]``: one store per alias and process, built on first use."""

    def __init__(self) -> None:
        self._stores: dict[str, BaseRecordStore] = {}
        self._lock = threading.Lock()

    def __getitem__(self, alias: str) -> BaseRecordStore:
        store = self._stores.get(alias)
        if store is None:
            with self._lock:
                store = self._stores.get(alias)
                if store is None:
                    configured = entries()
                    if alias not in configured:
                        raise ConfigurationError(
                            f"no record store {alias!r} in SHARDCACHE_RECORDS "
                            f"(known: {', '.join(sorted(configured))})"
                        )
                    store = self._stores[alias] = build(alias, configured[alias])
        return store

    def __iter__(self) -> Iterator[str]:
        return iter(entries())

    def close_all(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


stores = StoreHandler()


@receiver(setting_changed)
def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    # As Django's own cache handler does: stores built from old settings are not kept.
    if setting == "SHARDCACHE_RECORDS":
        stores.close_all()
