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

from collections.abc import Mapping, Sequence
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
from shardcache.codec import MAX_VALUE_SIZE
from shardcache.compressors import COMPRESSORS
from shardcache.config import RedisAddress, import_string, resolve_strategy
from shardcache.errors import ConfigurationError
from shardcache.hashing import make_selector
from shardcache.protocols import Topology
from shardcache.serializers import SERIALIZERS
from shardcache.topologies.memcache import crc32_shard_func

__all__ = [
    "CODEC_OPTIONS",
    "OPTIONS",
    "build_cache",
    "build_topology",
    "parse_location",
    "problems",
]

# What a `Cache` applies to values; every other option shapes the topology's connections.
CODEC_OPTIONS = frozenset(
    {"SERIALIZER", "COMPRESSOR", "COMPRESS_THRESHOLD", "SIGNING_SECRET", "IGNORE_ERRORS"}
    | {"MAX_VALUE_SIZE"}
)
_CODEC = CODEC_OPTIONS
_REDIS = {"CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "MAX_CONNECTIONS", "USERNAME", "PASSWORD"}
_TLS = {"SSL_CA_CERTS", "SSL_CERTFILE", "SSL_KEYFILE", "SSL_CERT_REQS"}
OPTIONS: dict[str, frozenset[str]] = {
    "hashpool": frozenset(_CODEC | _REDIS | _TLS | {"HASH"}),
    "cluster": frozenset(_CODEC | _REDIS | _TLS | {"READ_FROM_REPLICAS", "MAX_ATTEMPTS"}),
    "sentinel": frozenset(
        _CODEC
        | _REDIS
        | {"MASTERS", "HASH", "DB", "SENTINEL_USERNAME", "SENTINEL_PASSWORD", "FAILOVER_PAUSE"}
        | {"READ_FROM_REPLICAS"}
    ),
    "memcache": frozenset(
        _CODEC
        | {"CONNECT_TIMEOUT", "SOCKET_TIMEOUT", "MAX_CONNECTIONS"}
        | {"SHARD_STATES", "SHARD_FUNC", "RETRY_TIMEOUT", "INVALIDATE_NON_ACTIVE"}
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
            raise ConfigurationError(f"SHARD_STATES entry {entry!r}: expected address, state")
        try:
            state = MemcachedState(str(entry[1]).upper())
        except ValueError:
            known = ", ".join(s.value for s in MemcachedState)
            raise ConfigurationError(f"unknown shard state {entry[1]!r}: {known}") from None
        source = _memcache_address(entry[2]) if len(entry) == 3 else None
        states.append(ShardState(_memcache_address(str(entry[0])), state, source))
    return states


def problems(kind: str, location: Any, options: Mapping[str, Any]) -> list[tuple[int, str]]:
    """What is wrong with a ``CACHES`` entry, as ``(check number, message)`` pairs."""
    found: list[tuple[int, str]] = []
    unknown = sorted(set(options) - OPTIONS[kind])
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[kind]))
        found.append((1, f"unknown OPTIONS {unknown}; this backend takes {allowed}"))
    servers = parse_location(location)
    if not servers:
        found.append((2, "LOCATION is empty: give the servers' addresses"))
    try:
        if kind == "memcache":
            _shard_states(servers, options)
        else:
            for server in servers:
                RedisAddress.parse(server)
    except ConfigurationError as exc:
        found.append((3, str(exc)))
    try:
        if "HASH" in options:
            make_selector(options["HASH"], ["a", "b"])
        if kind == "memcache":
            _shard_func(options.get("SHARD_FUNC", "crc32"))
        if kind == "sentinel" and not _masters(options):
            raise ConfigurationError("OPTIONS['MASTERS'] must name one master or several")
    except ConfigurationError as exc:
        found.append((4, str(exc)))
    try:
        resolve_strategy(options.get("SERIALIZER", "pickle"), SERIALIZERS, "serializer")
        if options.get("COMPRESSOR") is not None:
            resolve_strategy(options["COMPRESSOR"], COMPRESSORS, "compressor")
    except ConfigurationError as exc:
        found.append((5, str(exc)))
    return found


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


def _checked(kind: str, location: Any, options: Mapping[str, Any]) -> None:
    found = problems(kind, location, options)
    if found:
        text = "; ".join(f"shardcache.E00{n}: {m}" for n, m in found)
        raise ConfigurationError(text)


def build_topology(kind: str, location: Any, options: Mapping[str, Any]) -> Topology:
    """A new topology for an entry (`ConfigurationError` naming each problem when it is
    not valid). Backends share them through `shardcache.registry` instead of calling this."""
    _checked(kind, location, options)
    servers = parse_location(location)
    o = dict(options)
    timeouts: dict[str, Any] = {
        "connect_timeout": float(o.get("CONNECT_TIMEOUT", 1.0)),
        "read_timeout": float(o.get("SOCKET_TIMEOUT", 3.0)),
    }
    tls = {name.lower(): o[name] for name in _TLS if name in o}
    credentials: dict[str, Any] = {"username": o.get("USERNAME"), "password": o.get("PASSWORD")}
    if kind == "hashpool":
        return HashPool(
            servers,
            hash=o.get("HASH", "fnv1a_32"),
            max_connections_per_instance=int(o.get("MAX_CONNECTIONS", 64)),
            **timeouts,
            **credentials,
            **tls,
        )
    if kind == "cluster":
        return Cluster(
            servers,
            read_from_replicas=bool(o.get("READ_FROM_REPLICAS", False)),
            max_attempts=int(o.get("MAX_ATTEMPTS", 5)),
            max_connections_per_node=int(o.get("MAX_CONNECTIONS", 64)),
            **timeouts,
            **credentials,
            **tls,
        )
    if kind == "sentinel":
        return SentinelClient(
            servers,
            _masters(o),
            pool_size=int(o.get("MAX_CONNECTIONS", 64)),
            hash=o.get("HASH", "fnv1a_32"),
            db=int(o.get("DB", 0)),
            sentinel_username=o.get("SENTINEL_USERNAME"),
            sentinel_password=o.get("SENTINEL_PASSWORD"),
            failover_pause=float(o.get("FAILOVER_PAUSE", 5.0)),
            read_from_replicas=bool(o.get("READ_FROM_REPLICAS", False)),
            **timeouts,
            **credentials,
        )
    manager = StaticShardManager(
        _shard_states(servers, o),
        _shard_func(o.get("SHARD_FUNC", "crc32")),
        connect_timeout=timeouts["connect_timeout"],
        timeout=timeouts["read_timeout"],
        max_pool_size=int(o.get("MAX_CONNECTIONS", 64)),
        retry_timeout=float(o.get("RETRY_TIMEOUT", 2.0)),
    )
    client = ShardedMemcacheClient(
        manager, invalidate_non_active=bool(o.get("INVALIDATE_NON_ACTIVE", False))
    )
    return MemcacheTopology(client)


def build_cache(topology: Topology, options: Mapping[str, Any], *, prefix: str = "") -> Cache:
    """A `Cache` on ``topology`` with an entry's codec options (Django makes its own keys,
    so it passes no ``prefix``)."""
    o = dict(options)
    return Cache(
        topology,
        prefix=prefix,
        serializer=o.get("SERIALIZER", "pickle"),
        compressor=o.get("COMPRESSOR"),
        compress_threshold=int(o.get("COMPRESS_THRESHOLD", 1024)),
        signing_secret=o.get("SIGNING_SECRET"),
        max_value_size=int(o.get("MAX_VALUE_SIZE", MAX_VALUE_SIZE)),
        ignore_errors=bool(o.get("IGNORE_ERRORS", False)),
    )
