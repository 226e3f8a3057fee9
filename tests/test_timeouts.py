"""Every timeout option a user sets bounds the calls it names, on every topology and through
every adapter: `Cache` (sync and asyncio), Django's backend and Flask-Caching's.

- ``SOCKET_TIMEOUT`` against a paused server (SIGSTOP): the connection is open, the reply
  never comes.
- ``CONNECT_TIMEOUT`` against a stalled one (paused, its accept queue full): the TCP
  handshake itself never completes, and the socket timeout is set far longer so that only
  the connect timeout can end the wait.
- ``RETRY_TIMEOUT``: after that one wait the shard's calls fail (here: miss) at once, and
  the shards that did not fail answer as before.
- A write that timed out holds its server back past ``RETRY_TIMEOUT`` until the server has
  run it (`shardcache.fence`), so it can never land after a newer write of the same key.

All with ``IGNORE_ERRORS``, so a bounded call is a miss; the fault suite and
``test_breaker.py`` show the errors raised without it. The topologies for cluster and
sentinel have no replicas, so a paused master cannot be failed over under the other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import flask
import flask_caching
import pytest
from django.core.cache import caches
from django.test import override_settings

from shardcache import Cache
from shardcache.registry import Registry
from shardcache.testing import (
    MemcachedServers,
    RedisCluster,
    RedisSentinel,
    StandaloneRedis,
)
from shardcache.testing._process import ServerProcess, wait_until
from shardcache_django.cache import BACKENDS

KINDS = ["hashpool", "cluster", "sentinel", "memcache"]
APIS = ["Cache", "Cache-async", "Django", "Flask"]
BACKEND = {kind: backend.__name__ for kind, backend in BACKENDS.items()}
SLACK = 1.0  # scheduling on a busy 2-core machine; far below what a wrong timeout would cost


@pytest.fixture(scope="module")
def cluster_without_replicas() -> Iterator[RedisCluster]:
    with RedisCluster(masters=3, replicas_per_master=0) as servers:
        yield servers


@pytest.fixture(scope="module")
def sentinel_without_replicas() -> Iterator[RedisSentinel]:
    with RedisSentinel(replicas_per_master=0, sentinels=1, quorum=1) as servers:
        yield servers


@pytest.fixture
def setup(request: pytest.FixtureRequest, kind: str) -> tuple[Any, list[str], dict[str, Any]]:
    """The servers of ``kind``, the location to configure, and the options it needs."""
    if kind == "hashpool":
        pool: StandaloneRedis = request.getfixturevalue("redis_pool_servers")
        return pool, pool.urls, {}
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("cluster_without_replicas")
        return cluster, [cluster.nodes[0].address], {}
    if kind == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("sentinel_without_replicas")
        location = [f"127.0.0.1:{port}" for _, port in sentinel.sentinel_addresses]
        return sentinel, location, {"MASTERS": sentinel.names}
    memcache: MemcachedServers = request.getfixturevalue("memcached_servers")
    return memcache, memcache.addresses, {}


class Api:
    """Reads and writes through one adapter, and the stored key of a key used that way."""

    def __init__(
        self,
        read: Callable[[str], Any],
        write: Callable[[str, Any], Any],
        core: Cache,
        stored: Callable[[str], bytes],
    ) -> None:
        self.read, self.write, self.core, self.stored = read, write, core, stored

    def shard_of(self, key: str) -> Any:
        return self.core.topology.shard_for(self.stored(key))


@contextlib.contextmanager
def _through(
    api: str, kind: str, location: list[str], options: dict[str, Any], own: Registry
) -> Iterator[Api]:
    if api == "Cache":
        cache = own.cache(kind, location, options)
        yield Api(cache.get, cache.set, cache, cache.make_key)
    elif api == "Cache-async":
        cache = own.cache(kind, location, options)
        loop = asyncio.new_event_loop()  # one loop, so its pool stays warm between calls
        try:
            yield Api(
                lambda key: loop.run_until_complete(cache.aget(key)),
                lambda key, value: loop.run_until_complete(cache.aset(key, value)),
                cache,
                cache.make_key,
            )
        finally:
            loop.close()
    elif api == "Django":
        entry = {"BACKEND": f"shardcache_django.cache.{BACKEND[kind]}", "LOCATION": location}
        with override_settings(CACHES={"default": {**entry, "OPTIONS": options}}):
            backend = caches["default"]
            core: Cache = backend.core  # type: ignore[attr-defined]
            made = backend.make_and_validate_key
            yield Api(backend.get, backend.set, core, lambda key: core.make_key(made(key)))
    else:
        app = flask.Flask(__name__)
        config = {"CACHE_TYPE": f"shardcache_flask.{BACKEND[kind]}", "CACHE_ARGS": location}
        config.update({f"CACHE_SHARDCACHE_{name}": value for name, value in options.items()})
        app.config.update(config)
        flask_cache = flask_caching.Cache(app)
        with app.app_context():
            backend = flask_cache.cache
            core = backend.core
            yield Api(backend.get, backend.set, core, core.make_key)


def _server_of(servers: Any, kind: str, shard: Any) -> ServerProcess:
    if kind == "sentinel":
        return servers.master(shard.id)
    return next(s for s in servers if re.search(rf":{s.port}\b", shard.id))


def _two_keys(api: Api, kind: str, servers: Any, location: list[str]) -> tuple[str, str]:
    """A key on a server that is not the first in ``location`` (the one a cluster reads
    its slot map from), and a key on another server."""
    first = location[0].split("//")[-1].split("/")[0]
    target = next(
        f"k{i}"
        for i in range(10_000)
        if _server_of(servers, kind, api.shard_of(f"k{i}")).address != first
    )
    sick = api.shard_of(target)
    other = next(f"o{i}" for i in range(10_000) if api.shard_of(f"o{i}") is not sick)
    return target, other


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


@pytest.fixture
def own() -> Iterator[Registry]:
    mine = Registry()
    yield mine
    mine.close()


@contextlib.contextmanager
def _opened(
    setup: tuple[Any, list[str], dict[str, Any]],
    api: str,
    kind: str,
    own: Registry,
    **timeouts: float,
) -> Iterator[tuple[Api, str, str, ServerProcess]]:
    """A cache through ``api`` with ``timeouts`` (failures ignored, a shard marked down for
    30 s), a key on one server, a key on another that answers fine, and the first server."""
    servers, location, extra = setup
    options = {**extra, "RETRY_TIMEOUT": 30, "IGNORE_ERRORS": True, **timeouts}
    with _through(api, kind, location, options, own) as through:
        target, other = _two_keys(through, kind, servers, location)
        through.write(other, "fine")
        yield through, target, other, _server_of(servers, kind, through.shard_of(target))


def _bounded_once_then_fast(through: Api, target: str, other: str, timeout: float) -> None:
    missed, waited = _timed(lambda: through.read(target))
    assert missed is None
    assert waited < timeout + SLACK, f"a {timeout}s timeout and the call took {waited:.2f}s"
    # RETRY_TIMEOUT: marked down, so the next calls do not wait at all...
    for _ in range(20):
        missed, waited = _timed(lambda: through.read(target))
        assert missed is None
        assert waited < 0.1, f"a marked-down server still cost {waited:.2f}s"
    assert through.read(other) == "fine"  # ...and the other servers answer as before


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_socket_timeout_bounds_a_call_to_a_paused_server(
    kind: str, api: str, setup: tuple[Any, list[str], dict[str, Any]], own: Registry
) -> None:
    with _opened(setup, api, kind, own, SOCKET_TIMEOUT=0.5) as (through, target, other, server):
        through.write(target, "before")
        assert through.read(target) == "before"  # a warm connection: the reply is the wait
        server.pause()
        try:
            _bounded_once_then_fast(through, target, other, 0.5)
        finally:
            server.resume()


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_connect_timeout_bounds_a_call_to_a_server_that_never_completes_the_handshake(
    kind: str, api: str, setup: tuple[Any, list[str], dict[str, Any]], own: Registry
) -> None:
    # Only the connect timeout can end the wait: the socket timeout is far longer. Nothing
    # has connected to the target's server yet.
    timeouts = {"CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 20}
    with (
        _opened(setup, api, kind, own, **timeouts) as (through, target, other, server),
        server.stalled(),
    ):
        _bounded_once_then_fast(through, target, other, 0.5)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_timed_out_write_holds_its_server_back_until_the_server_has_run_it(
    kind: str, api: str, setup: tuple[Any, list[str], dict[str, Any]], own: Registry
) -> None:
    timeouts = {"SOCKET_TIMEOUT": 0.5, "RETRY_TIMEOUT": 0.2}
    with _opened(setup, api, kind, own, **timeouts) as (through, target, other, server):
        through.write(target, "before")
        assert through.read(target) == "before"
        server.pause()
        try:
            # Sent, and not answered: the paused server will run it when it wakes.
            _, waited = _timed(lambda: through.write(target, "timed out"))
            assert 0.4 < waited < 0.5 + SLACK  # it reached the paused server and timed out
            time.sleep(0.3)  # past RETRY_TIMEOUT: a circuit breaker alone lets a probe go
            for _ in range(5):
                _, waited = _timed(lambda: through.write(target, "new"))
                assert waited < 0.1, f"a write went to the paused server ({waited:.2f}s)"
            assert through.read(other) == "fine"
        finally:
            server.resume()

        def written() -> bool:
            through.write(target, "new")
            return bool(through.read(target) == "new")

        wait_until(written, timeout=15, what="the server to take writes again")
        # The late write ran before the new one was sent, never after it.
        assert through.read(target) == "new"
