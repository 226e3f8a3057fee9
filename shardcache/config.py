"""Parsing settings once: server addresses and pluggable strategies.

Every option a user gives (a ``LOCATION`` entry, a serializer name, a dotted path) is turned
into typed values here, and a bad one fails at once with a `ConfigurationError` naming it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from redis.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)

from shardcache.errors import ConfigurationError

__all__ = ["RedisAddress", "import_string", "mask_url", "resolve_strategy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RedisAddress:
    """Where one Redis server is and how to log in: parsed from ``host:port``,
    ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS) or ``unix:///path``."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    path: str | None = None

    @property
    def id(self) -> str:
        """A stable name for the shard: ``host:port/db`` (or ``unix:path/db``)."""
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{where}/{self.db}"

    @classmethod
    def parse(cls, text: str) -> RedisAddress:
        text = text.strip()
        if not text:
            raise ConfigurationError("empty Redis address")
        if "://" not in text:
            return cls._parse_host_port(text, text)
        database = urlsplit(text).path.strip("/")
        if not text.startswith("unix:") and database and not database.isdigit():
            shown = mask_url(text)
            raise ConfigurationError(f"bad database number {database!r} in {shown!r}")
        try:
            parsed = parse_url(text)  # redis-py's parser: credentials, db, TLS, query options
        except ValueError as exc:
            shown = mask_url(text)
            raise ConfigurationError(f"bad Redis URL {shown!r}: {mask_url(str(exc))}") from None
        return cls(
            host=parsed.get("host", "127.0.0.1"),
            port=int(parsed.get("port", 6379)),
            db=int(parsed.get("db", 0)),
            username=parsed.get("username"),
            password=parsed.get("password"),
            tls=parsed.get("connection_class") is SSLConnection,
            path=parsed.get("path"),
        )

    @classmethod
    def _parse_host_port(cls, text: str, original: str) -> RedisAddress:
        host, sep, port = text.rpartition(":")
        if not sep:
            host, port = text, "6379"
        host = host.strip("[]")  # [::1]:6379
        try:
            number = int(port)
        except ValueError:
            raise ConfigurationError(f"bad port in Redis address {mask_url(original)!r}") from None
        if not host or not 0 < number < 65536:
            shown = mask_url(original)
            raise ConfigurationError(f"bad Redis address {shown!r}: expected host:port")
        return cls(host=host, port=number)

    def connection_kwargs(self, **options: Any) -> dict[str, Any]:
        """Keyword arguments for a redis-py connection (``connection_class`` included)."""
        kwargs: dict[str, Any] = {"db": self.db, "username": self.username, **options}
        if self.password is not None:
            kwargs["password"] = self.password
        if self.path:
            kwargs.update(path=self.path, connection_class=UnixDomainSocketConnection)
            for tcp_only in ("socket_keepalive", "socket_keepalive_options"):
                kwargs.pop(tcp_only, None)
            return kwargs
        kwargs.update(host=self.host, port=self.port)
        kwargs["connection_class"] = SSLConnection if self.tls else Connection
        if not self.tls:
            for ssl_only in [name for name in kwargs if name.startswith("ssl_")]:
                kwargs.pop(ssl_only)
        return kwargs


# user:password@ at the start of an address or after a scheme's //, and password= in a query.
_USERINFO = re.compile(r"(^|//|[\s'\"(\[,;])([^\s:@/'\"]*):([^\s@/'\"]+)@")
_QUERY_PASSWORD = re.compile(r"(?i)((?:^|[?&])[a-z_]*password=)[^&\s'\"]*")


def mask_url(text: str) -> str:
    """``text`` with every password in the addresses it holds replaced by ``***``
    (``redis://user:***@host:6379/0``): for error messages, reprs and logs."""
    text = _USERINFO.sub(lambda m: f"{m[1]}{m[2]}:***@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m[1]}***", text)


def import_string(dotted: str) -> Any:
    """Import ``package.module.Name`` (Django's ``import_string``, without Django)."""
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise ConfigurationError(f"{dotted!r} is not a dotted path")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import {dotted!r}: {exc}") from exc


# django-redis's serializers and compressors, by the dotted paths its users configure: ours
# of the same format. (Theirs have another interface, and gzip/lzma have no twin here.)
DJANGO_REDIS_STRATEGIES = {
    "django_redis.serializers.pickle.PickleSerializer": "pickle",
    "django_redis.serializers.json.JSONSerializer": "json",
    "django_redis.serializers.msgpack.MSGPackSerializer": "msgpack",
    "django_redis.compressors.zlib.ZlibCompressor": "zlib",
    "django_redis.compressors.zstd.ZStdCompressor": "zstd",
    "django_redis.compressors.lz4.Lz4Compressor": "lz4",
}


def resolve_strategy(value: Any, known: Mapping[str, type[T]], kind: str, **init: Any) -> T:
    """An instance from a short name in ``known``, a dotted path, a class, or an instance
    (django-redis's dotted paths are read as ours of the same format)."""
    if isinstance(value, str):
        value = DJANGO_REDIS_STRATEGIES.get(value, value)
        if value in known:
            value = known[value]
        elif value.startswith("django_redis."):
            raise ConfigurationError(
                f"{kind} {value!r} is django-redis's, and has no shardcache twin; "
                f"choose one of {', '.join(sorted(known))}"
            )
        elif "." in value:
            value = import_string(value)
        else:
            names = ", ".join(sorted(known))
            raise ConfigurationError(f"unknown {kind} {value!r}; choose one of {names} or a path")
    if isinstance(value, type):
        try:
            return value(**init)  # type: ignore[no-any-return]
        except TypeError as exc:
            raise ConfigurationError(f"{kind} {value.__name__} cannot be made: {exc}") from exc
    return value  # type: ignore[no-any-return]
