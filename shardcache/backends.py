"""A cache backend described the framework-neutral way: a topology ``kind`` ("hashpool",
"cluster", "sentinel", "memcache"), a ``location`` (the servers) and upper-case ``OPTIONS``,
shaped like a Django ``CACHES`` entry. The Django and Flask adapters both translate their
settings into this, so every option is read, checked and applied here only.

`problems` lists what is wrong with an entry, without I/O (Django's system checks and the
Flask factory report it); `build_topology` turns a valid entry into a topology and
`build_cache` puts a core `Cache` on it. The framework backends do not call these directly:
they share one topology per process through `shardcache.registry`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from shardcache import (
    Cache,
    Cluster,
    HashPool,
    MemcachedState,
    MemcacheTopology,
    SentinelClient,
    ShardedMemcacheClient,
    ShardState,
    StaticShardManager,
)
from shardcache.codec import MAX_VALUE_SIZE, Codec
from shardcache.compressors import COMPRESSORS
from shardcache.config import RedisAddress, import_string, resolve_strategy
from shardcache.errors import ConfigurationError
from shardcache.hashing import make_selector
from shardcache.near import near_cache_of
from shardcache.protocols import Topology
from shardcache.serializers import SERIALIZERS, PickleSerializer
from shardcache.topologies.memcache import crc32_shard_func
from shardcache.topologies.memcache.states_file import StatesFile

__all__ = [
    "ALIASES",
    "CACHE_OPTIONS",
    "CODEC_OPTIONS",
    "OPTIONS",
    "Settings",
    "build_cache",
    "build_topology",
    "parse_location",
    "problems",
    "read_settings",
    "settings_of",
]

# What a `Cache` applies to values; every other option shapes the topology's connections.
CODEC_OPTIONS = frozenset(
    {"SERIALIZER", "COMPRESSOR", "COMPRESS_THRESHOLD", "SIGNING_SECRET", "IGNORE_ERRORS"}
    | {"MAX_VALUE_SIZE", "LOG_IGNORED_ERRORS", "STAMPEDE"}
)
_REDIS = {"CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "MAX_CONNECTIONS", "USERNAME", "PASSWORD"} | {
    "CONNECTION_POOL_KWARGS",
    "RETRY_TIMEOUT",
}
_TLS = {"SSL_CA_CERTS", "SSL_CERTFILE", "SSL_KEYFILE", "SSL_CERT_REQS"}
_NEAR = {"NEAR_CACHE"}  # Redis only: memcached cannot say when a value changes
# Options of each `Cache`, which caches on one shared topology may set apart.
CACHE_OPTIONS = CODEC_OPTIONS | _NEAR
OPTIONS: dict[str, frozenset[str]] = {
    "hashpool": frozenset(CODEC_OPTIONS | _REDIS | _TLS | _NEAR | {"HASH"}),
    "cluster": frozenset(
        CODEC_OPTIONS
        | _REDIS
        | _TLS
        | _NEAR
        | {"READ_FROM_REPLICAS", "MAX_ATTEMPTS", "REDIRECT_BUDGET"}
    ),
    "sentinel": frozenset(
        CODEC_OPTIONS
        | _REDIS
        | _TLS
        | _NEAR
        | {"MASTERS", "HASH", "DB", "SENTINEL_USERNAME", "SENTINEL_PASSWORD", "FAILOVER_PAUSE"}
        | {"READ_FROM_REPLICAS"}
    ),
    "memcache": frozenset(
        CODEC_OPTIONS
        | {"CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "MAX_CONNECTIONS"}
        | {"SHARD_STATES", "SHARD_FUNC", "RETRY_TIMEOUT", "INVALIDATE_NON_ACTIVE"}
        | {"SHARD_STATES_FILE"}
    ),
}


def parse_location(location: Any) -> list[str]:
    """``LOCATION`` as a list: a list/tuple, or one string split on ``;`` or ``,``."""
    if isinstance(location, str):
        parts = location.replace(";", ",").split(",")
    elif isinstance(location, Sequence):
        parts = [str(part) for part in location]
    else:
        parts = []
    return [part.strip() for part in parts if part and part.strip()]


def _memcache_address(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"bad memcached address {text!r}: expected host:port")
    return text


def _shard_states(servers: list[str], options: Mapping[str, Any]) -> list[ShardState]:
    """``SHARD_STATES``: ``{address: state}`` or a list of ``[address, state(, warm_source)]``."""
    raw = options.get("SHARD_STATES")
    if raw is None:
        return [ShardState(_memcache_address(s)) for s in servers]
    entries = list(raw.items()) if isinstance(raw, Mapping) else [tuple(e) for e in raw]
    states = []
    for entry in entries:
        if not 2 <= len(entry) <= 3:
            raise ConfigurationError(
                f"OPTIONS['SHARD_STATES'] entry {entry!r}: expected address, state"
            )
        try:
            state = MemcachedState(str(entry[1]).upper())
        except ValueError:
            known = ", ".join(s.value for s in MemcachedState)
            raise ConfigurationError(
                f"OPTIONS['SHARD_STATES']: unknown shard state {entry[1]!r}: {known}"
            ) from None
        source = _memcache_address(entry[2]) if len(entry) == 3 else None
        states.append(ShardState(_memcache_address(str(entry[0])), state, source))
    return states


# Names users bring from django-redis and Django's own RedisCache, read as ours.
ALIASES = {
    "SOCKET_CONNECT_TIMEOUT": "CONNECT_TIMEOUT",
    "IGNORE_EXCEPTIONS": "IGNORE_ERRORS",
    "LOG_IGNORED_EXCEPTIONS": "LOG_IGNORED_ERRORS",
}
# django-redis options with no meaning here: a check message says what replaces them.
_REPLACED = {
    "CLIENT_CLASS": "pick the shardcache backend for your servers instead "
    "(ShardedRedisCache, RedisClusterCache, RedisSentinelCache, ShardedMemcacheCache)",
}

# redis-py connection keyword arguments (django-redis's CONNECTION_POOL_KWARGS): those we have
# an option for become that option; a few are safe to hand to every connection as they are;
# the rest would break what shardcache relies on, and a check names why.
_POOL_KWARGS_AS = {
    "max_connections": "MAX_CONNECTIONS",
    "socket_timeout": "SOCKET_TIMEOUT",
    "socket_connect_timeout": "CONNECT_TIMEOUT",
    "username": "USERNAME",
    "password": "PASSWORD",
    "db": "DB",
    "ssl_ca_certs": "SSL_CA_CERTS",
    "ssl_certfile": "SSL_CERTFILE",
    "ssl_keyfile": "SSL_KEYFILE",
    "ssl_cert_reqs": "SSL_CERT_REQS",
}
POOL_KWARGS_PASSED = frozenset(
    {"socket_keepalive", "socket_keepalive_options", "client_name", "socket_read_size"}
)
_RETRIES = "shardcache's one retry rule decides what is retried"
_POOL_KWARGS_REFUSED = {
    "decode_responses": "values are bytes that the codec decodes",
    "encoding": "values are bytes that the codec decodes",
    "encoding_errors": "values are bytes that the codec decodes",
    "retry": _RETRIES,
    "retry_on_timeout": _RETRIES,
    "retry_on_error": _RETRIES,
    "protocol": "shardcache speaks RESP2 to every server",
    "health_check_interval": "a pooled connection that fails is replaced on the spot",
    "connection_class": "give the topology a connection_factory instead",
    "host": "the servers come from LOCATION",
    "port": "the servers come from LOCATION",
    "path": "the servers come from LOCATION",
}


def _number(kind: type, low: float, *, above: bool = False) -> Any:
    def convert(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        number = kind(value)
        if number < low or (above and number == low):
            raise ValueError
        return number

    return convert


def _directory_of_file(value: Any) -> str:
    path = str(os.fspath(value))
    if not path or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError
    return path


_STAMPEDE_KEYS = {"BETA": "beta", "STALE": "stale", "WAIT": "wait", "LOCK_TIMEOUT": "lock_timeout"}


def stampede_options(value: Any) -> dict[str, float] | None:
    """``OPTIONS["STAMPEDE"]`` as `Cache.get_or_compute` keyword arguments (None: off)."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    if not isinstance(value, Mapping) or not set(value) <= set(_STAMPEDE_KEYS):
        raise ValueError
    found = {}
    for name, number in value.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            raise ValueError
        found[_STAMPEDE_KEYS[name]] = float(number)
    return found


_NO_NEAR_MEMCACHE = (
    "memcached cannot tell a client that a value changed, so a near cache over it would "
    "serve replaced values; use a Redis backend for a near cache"
)


def _near_cache(value: Any) -> Any:
    try:
        near_cache_of(value)  # the settings are checked once here; each Cache makes its own
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from exc
    return value


def _flag(value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError


# How each scalar option's value is read: a bad one is a check error naming the option.
_TYPED: dict[str, tuple[Any, str]] = {
    "CONNECT_TIMEOUT": (_number(float, 0, above=True), "a number of seconds > 0"),
    "SOCKET_TIMEOUT": (_number(float, 0, above=True), "a number of seconds > 0"),
    "MAX_CONNECTIONS": (_number(int, 1), "an integer >= 1"),
    "COMPRESS_THRESHOLD": (_number(int, 0), "an integer >= 0"),
    "MAX_VALUE_SIZE": (_number(int, 1), "an integer >= 1 (bytes)"),
    "MAX_ATTEMPTS": (_number(int, 1), "an integer >= 1"),
    "REDIRECT_BUDGET": (_number(float, 0, above=True), "a number of seconds > 0"),
    "DB": (_number(int, 0), "an integer >= 0"),
    "FAILOVER_PAUSE": (_number(float, 0), "a number of seconds >= 0"),
    "RETRY_TIMEOUT": (_number(float, 0), "a number of seconds >= 0"),
    "IGNORE_ERRORS": (_flag, "True or False"),
    "LOG_IGNORED_ERRORS": (_flag, "True or False"),
    "READ_FROM_REPLICAS": (_flag, "True or False"),
    "INVALIDATE_NON_ACTIVE": (_flag, "True or False"),
    "SHARD_STATES_FILE": (_directory_of_file, "a file path in an existing directory"),
    "NEAR_CACHE": (
        _near_cache,
        "True, or a dict of MAX_ENTRIES, MAX_BYTES (integers >= 1), PREFIXES (str or list), "
        "MAX_AGE (seconds > 0)",
    ),
    "STAMPEDE": (
        lambda value: stampede_options(value),
        "True, or a dict of BETA, STALE, WAIT, LOCK_TIMEOUT (numbers >= 0)",
    ),
}


@dataclass(frozen=True)
class Settings:
    """A backend entry read once: its kind, its servers, and its options under their own
    names (aliases resolved) with typed values. Django's checks, the builder, the Flask
    factory and the records handler all read this, so checks and runtime cannot disagree."""

    kind: str
    servers: tuple[str, ...]
    options: Mapping[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


def read_settings(
    kind: str, location: Any, options: Mapping[str, Any]
) -> tuple[Settings, list[tuple[int, str]]]:
    """The entry as `Settings`, and what is wrong with it as ``(check number, message)``
    pairs (without I/O). Settings with problems are not for building."""
    found: list[tuple[int, str]] = []
    typed: dict[str, Any] = {}
    unknown = []
    for name, value in options.items():
        own = ALIASES.get(name, name)
        if own in _REPLACED:
            found.append((1, f"OPTIONS[{name!r}] is django-redis's: {_REPLACED[own]}"))
        elif own in _NEAR and kind == "memcache":
            found.append((1, f"OPTIONS[{name!r}]: {_NO_NEAR_MEMCACHE}"))
        elif own not in OPTIONS[kind]:
            unknown.append(name)
        else:
            _put(typed, found, own, value, f"OPTIONS[{name!r}]")
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[kind]))
        found.append((1, f"unknown OPTIONS {sorted(unknown)}; this backend takes {allowed}"))
    if "CONNECTION_POOL_KWARGS" in typed:
        _read_pool_kwargs(kind, typed, found)
    servers = parse_location(location)
    if not servers:
        found.append((2, "LOCATION is empty: give the servers' addresses"))
    try:
        if kind == "memcache":
            _shard_states(servers, typed)
        else:
            for server in servers:
                RedisAddress.parse(server)
    except ConfigurationError as exc:
        found.append((3, str(exc)))
    try:
        if "HASH" in typed:
            make_selector(typed["HASH"], ["a", "b"])
    except ConfigurationError as exc:
        found.append((4, f"OPTIONS['HASH']: {exc}"))
    try:
        if kind == "memcache":
            _shard_func(typed.get("SHARD_FUNC", "crc32"))
    except ConfigurationError as exc:
        found.append((4, f"OPTIONS['SHARD_FUNC']: {exc}"))
    if kind == "sentinel" and not _masters(typed):
        found.append((4, "OPTIONS['MASTERS'] must name one master or several"))
    codec_checks = {
        "SERIALIZER": lambda v: resolve_strategy(v, SERIALIZERS, "serializer"),
        "COMPRESSOR": lambda v: v is None or resolve_strategy(v, COMPRESSORS, "compressor"),
        "SIGNING_SECRET": lambda v: v is None or Codec(PickleSerializer(), signing_secret=v),
    }
    for name, check in codec_checks.items():
        try:
            check(typed.get(name, "pickle" if name == "SERIALIZER" else None))
        except ConfigurationError as exc:
            found.append((5, f"OPTIONS[{name!r}]: {exc}"))
    return Settings(kind, tuple(servers), MappingProxyType(typed)), found


def _put(
    typed: dict[str, Any], found: list[tuple[int, str]], own: str, value: Any, label: str
) -> None:
    """``typed[own] = value``, converted to its type, or a check message naming ``label``."""
    if own not in _TYPED:
        typed[own] = value
        return
    convert, expected = _TYPED[own]
    try:
        typed[own] = convert(value)
    except (TypeError, ValueError):
        found.append((1, f"{label} must be {expected}, not {value!r}"))


def _read_pool_kwargs(kind: str, typed: dict[str, Any], found: list[tuple[int, str]]) -> None:
    """Fold ``CONNECTION_POOL_KWARGS`` into ``typed``: our options for what we name, the
    safe rest kept for the connections, and a check message for anything else."""
    given = typed.pop("CONNECTION_POOL_KWARGS")
    where = "OPTIONS['CONNECTION_POOL_KWARGS']"
    if not isinstance(given, Mapping):
        found.append((1, f"{where} must be a dict of redis-py connection arguments"))
        return
    passed: dict[str, Any] = {}
    for name, value in given.items():
        own = _POOL_KWARGS_AS.get(name)
        if own is not None and own in OPTIONS[kind]:
            if own in typed:
                found.append((1, f"{where}[{name!r}] repeats OPTIONS[{own!r}]: give one"))
                continue
            _put(typed, found, own, value, f"{where}[{name!r}]")
        elif name in POOL_KWARGS_PASSED:
            passed[name] = value
        elif name in _POOL_KWARGS_REFUSED:
            found.append((1, f"{where}[{name!r}] is not used: {_POOL_KWARGS_REFUSED[name]}"))
        else:
            takes = sorted({*(n for n, o in _POOL_KWARGS_AS.items() if o in OPTIONS[kind])})
            found.append(
                (
                    1,
                    f"{where}[{name!r}] is not passed on; it takes "
                    f"{', '.join(takes + sorted(POOL_KWARGS_PASSED))}",
                )
            )
    if passed:
        typed["CONNECTION_POOL_KWARGS"] = passed


def problems(kind: str, location: Any, options: Mapping[str, Any]) -> list[tuple[int, str]]:
    """What is wrong with a ``CACHES`` entry, as ``(check number, message)`` pairs."""
    return read_settings(kind, location, options)[1]


def settings_of(kind: str, location: Any, options: Mapping[str, Any]) -> Settings:
    """The entry's `Settings`, or `ConfigurationError` naming each problem."""
    settings, found = read_settings(kind, location, options)
    if found:
        raise ConfigurationError("; ".join(f"shardcache.E00{n}: {m}" for n, m in found))
    return settings


def _shard_func(spec: Any) -> Any:
    """``SHARD_FUNC``: "crc32" (default), "ketama", "rendezvous", a callable or a dotted path."""
    if spec == "crc32":
        return crc32_shard_func
    if spec in ("ketama", "rendezvous") or callable(spec):
        return spec
    if isinstance(spec, str) and "." in spec:
        return import_string(spec)
    raise ConfigurationError(f"unknown SHARD_FUNC {spec!r}: crc32, ketama, rendezvous or a path")


def _masters(options: Mapping[str, Any]) -> list[str]:
    masters = options.get("MASTERS")
    return [masters] if isinstance(masters, str) else list(masters or [])


def build_topology(settings: Settings) -> Topology:
    """A new topology for valid settings (`settings_of`). Backends share them through
    `shardcache.registry` instead of calling this."""
    kind, servers, o = settings.kind, list(settings.servers), settings.options
    timeouts: dict[str, Any] = {
        "connect_timeout": o.get("CONNECT_TIMEOUT", 1.0),
        "read_timeout": o.get("SOCKET_TIMEOUT", 3.0),
    }
    breaker: dict[str, Any] = {"retry_timeout": o.get("RETRY_TIMEOUT", 1.0)}
    tls = {name.lower(): o[name] for name in _TLS if name in o}
    credentials: dict[str, Any] = {"username": o.get("USERNAME"), "password": o.get("PASSWORD")}
    passed: dict[str, Any] = dict(o.get("CONNECTION_POOL_KWARGS", {}))
    if kind == "hashpool":
        return HashPool(
            servers,
            hash=o.get("HASH", "fnv1a_32"),
            max_connections_per_instance=o.get("MAX_CONNECTIONS", 64),
            **timeouts,
            **breaker,
            **credentials,
            **tls,
            **passed,
        )
    if kind == "cluster":
        return Cluster(
            servers,
            read_from_replicas=o.get("READ_FROM_REPLICAS", False),
            max_attempts=o.get("MAX_ATTEMPTS", 32),
            redirect_budget=o.get("REDIRECT_BUDGET", 1.0),
            max_connections_per_node=o.get("MAX_CONNECTIONS", 64),
            **timeouts,
            **credentials,
            **tls,
            **passed,
        )
    if kind == "sentinel":
        return SentinelClient(
            servers,
            _masters(o),
            pool_size=o.get("MAX_CONNECTIONS", 64),
            hash=o.get("HASH", "fnv1a_32"),
            db=o.get("DB", 0),
            sentinel_username=o.get("SENTINEL_USERNAME"),
            sentinel_password=o.get("SENTINEL_PASSWORD"),
            failover_pause=o.get("FAILOVER_PAUSE", 5.0),
            read_from_replicas=o.get("READ_FROM_REPLICAS", False),
            ssl=bool(tls),
            **timeouts,
            **breaker,
            **credentials,
            **tls,
            **passed,
        )
    manager = StaticShardManager(
        _shard_states(servers, o),
        _shard_func(o.get("SHARD_FUNC", "crc32")),
        connect_timeout=timeouts["connect_timeout"],
        timeout=timeouts["read_timeout"],
        max_pool_size=o.get("MAX_CONNECTIONS", 64),
        retry_timeout=o.get("RETRY_TIMEOUT", 2.0),
    )
    client = ShardedMemcacheClient(
        manager, invalidate_non_active=o.get("INVALIDATE_NON_ACTIVE", False)
    )
    shared = o.get("SHARD_STATES_FILE")
    return MemcacheTopology(
        client, states_file=None if shared is None else StatesFile(shared, manager)
    )


def build_cache(topology: Topology, settings: Settings, *, prefix: str = "") -> Cache:
    """A `Cache` on ``topology`` with the settings' codec options (Django makes its own
    keys, so it passes no ``prefix``)."""
    o = settings.options
    return Cache(
        topology,
        prefix=prefix,
        serializer=o.get("SERIALIZER", "pickle"),
        compressor=o.get("COMPRESSOR"),
        compress_threshold=o.get("COMPRESS_THRESHOLD", 1024),
        signing_secret=o.get("SIGNING_SECRET"),
        max_value_size=o.get("MAX_VALUE_SIZE", MAX_VALUE_SIZE),
        ignore_errors=o.get("IGNORE_ERRORS", False),
        log_ignored_errors=o.get("LOG_IGNORED_ERRORS", True),
        near_cache=o.get("NEAR_CACHE"),
    )
