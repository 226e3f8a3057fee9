"""One client per process, tried the way production runs it: Django's threaded WSGI server
(a fresh thread per request) and its ASGI handler on one event loop, forked workers, shard
states changed from another thread, and Flask apps sharing settings. Each runs on the four
Django backends, on real servers; afterwards server connections and Python threads must not
have grown with the number of requests."""

from __future__ import annotations

import asyncio
import json
import os
import select
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.cache import caches
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.http import HttpRequest, HttpResponse
from django.test import override_settings
from django.urls import path

from shardcache import MemcachedState, ShardState
from shardcache.registry import registry
from shardcache.testing import MemcachedServers, RedisCluster, RedisSentinel, StandaloneRedis
from shardcache_flask import ShardedRedisCache as FlaskShardedRedisCache
from tests.process import our_threads, settles

# --- the site under test: two views that use the default cache ----------------------------

TOPOLOGIES_SEEN: set[int] = set()  # by the views: how many topologies served the requests


def sync_view(request: HttpRequest, n: int) -> HttpResponse:
    cache = caches["default"]
    TOPOLOGIES_SEEN.add(id(cache.core.topology))
    cache.set(f"r{n}", n)
    found = cache.get_many([f"r{n}", "shared"])
    cache.incr("hits")
    return HttpResponse(json.dumps([found[f"r{n}"], found["shared"]]))


async def async_view(request: HttpRequest, n: int) -> HttpResponse:
    cache = caches["default"]
    TOPOLOGIES_SEEN.add(id(cache.core.topology))
    await cache.aset(f"r{n}", n)
    found = await cache.aget_many([f"r{n}", "shared"])
    await cache.aincr("hits")
    return HttpResponse(json.dumps([found[f"r{n}"], found["shared"]]))


urlpatterns = [path("sync/<int:n>", sync_view), path("async/<int:n>", async_view)]


# --- the four deployments ------------------------------------------------------------------


@dataclass
class Deployment:
    """A CACHES entry on real servers, and how to count the connections its servers hold."""

    entry: dict[str, Any]
    connections: Callable[[], int]
    native_async: bool = True  # False: memcache's async calls run its sync client in threads


def _redis_clients(nodes: list[Any]) -> Callable[[], int]:
    def count() -> int:
        total = 0
        for node in nodes:  # servers and sentinels alike
            with node.client() as conn:
                total += int(conn.info("clients")["connected_clients"])
        return total

    return count


def _memcached_clients(servers: MemcachedServers) -> Callable[[], int]:
    def count() -> int:
        total = 0
        for server in servers.servers:
            conn = server.client()
            try:
                total += int(conn.stats()[b"curr_connections"])
            finally:
                conn.close()
        return total

    return count


def deployment_of(kind: str, request: pytest.FixtureRequest) -> Deployment:
    backend = "shardcache_django.cache."
    if kind == "hashpool":
        pool: StandaloneRedis = request.getfixturevalue("clean_redis_pool_servers")
        entry = {"BACKEND": backend + "ShardedRedisCache", "LOCATION": pool.urls}
        return Deployment(entry, _redis_clients(pool.servers))
    if kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("clean_redis_cluster")
        entry = {"BACKEND": backend + "RedisClusterCache", "LOCATION": cluster.urls[:2]}
        return Deployment(entry, _redis_clients(cluster.nodes))
    if kind == "sentinel":
        setup: RedisSentinel = request.getfixturevalue("clean_redis_sentinel")
        entry = {
            "BACKEND": backend + "RedisSentinelCache",
            "LOCATION": [f"{h}:{p}" for h, p in setup.sentinel_addresses],
            "OPTIONS": {"MASTERS": ["bucket0", "bucket1"]},
        }
        return Deployment(entry, _redis_clients([*setup.redis_nodes, *setup.sentinels]))
    servers: MemcachedServers = request.getfixturevalue("clean_memcached_servers")
    entry = {"BACKEND": backend + "ShardedMemcacheCache", "LOCATION": servers.addresses}
    return Deployment(entry, _memcached_clients(servers), native_async=False)


KINDS = ["hashpool", "cluster", "sentinel", "memcache"]


@pytest.fixture(params=KINDS)
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    found = deployment_of(request.param, request)
    with override_settings(ROOT_URLCONF=__name__, CACHES={"default": found.entry}):
        caches["default"].set_many({"shared": "everyone", "hits": 0})
        TOPOLOGIES_SEEN.clear()
        yield found


# --- threads: Django's runserver, one thread per request ----------------------------------


@pytest.fixture
def threaded_server() -> Iterator[str]:
    server = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
    server.set_app(WSGIHandler())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def test_threaded_server_shares_one_topology(
    deployment: Deployment, threaded_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("ERROR", logger="django.server")
    for n in range(10):  # warm: the pools have what one request at a time needs
        assert _get(f"{threaded_server}/sync/{n}") == [n, "everyone"]
    baseline_threads = threading.active_count()
    warm = deployment.connections()
    ours = our_threads()
    for n in range(200):  # each in a thread of its own, with a backend object of its own
        assert _get(f"{threaded_server}/sync/{n}") == [n, "everyone"]
    assert deployment.connections() <= warm
    assert settles(lambda: threading.active_count() <= baseline_threads)
    assert our_threads() == ours
    assert all(thread.daemon for thread in ours)
    assert caches["default"].get("hits") == 210
    assert len(TOPOLOGIES_SEEN) == 1


# --- ASGI: Django's handler, every request on one event loop -----------------------------


async def _asgi_get(app: ASGIHandler, url: str) -> tuple[int, bytes]:
    done = asyncio.Event()
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url,
        "raw_path": url.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def test_asgi_requests_on_one_loop_share_one_topology(deployment: Deployment) -> None:
    app = ASGIHandler()
    concurrency = 10

    async def burst(first: int) -> None:
        replies = await asyncio.gather(
            *(_asgi_get(app, f"/async/{n}") for n in range(first, first + concurrency))
        )
        for n, (status, body) in zip(range(first, first + concurrency), replies, strict=True):
            assert (status, json.loads(body)) == (200, [n, "everyone"])

    async def scenario() -> tuple[int, int, int, int]:
        for first in range(0, 20, concurrency):
            await burst(first)
        warm, threads = deployment.connections(), threading.active_count()
        for first in range(0, 200, concurrency):
            await burst(first)
        return warm, deployment.connections(), threads, threading.active_count()

    before = deployment.connections()
    warm, after, threads_warm, threads_after = asyncio.run(scenario())
    # Each request has a backend object of its own; the pools are the loop's, shared by all:
    # at most one connection per concurrent request and server (at most 3 servers take
    # keys here), plus the sentinels' or the slot map's, however many requests.
    assert warm - before <= concurrency * 3 + 8
    assert after - before <= concurrency * 3 + 8
    assert threads_after <= threads_warm + 1
    assert len(TOPOLOGIES_SEEN) == 1
    if deployment.native_async:  # the loop is gone: its connections were closed with it
        assert settles(lambda: deployment.connections() <= before)


# --- fork: gunicorn --preload, after a warm-up ---------------------------------------------


def _use_every_call(alias: str, tag: str) -> list[str]:
    """Sync and async, single and multi-key calls, each checked and timed."""
    cache = caches[alias]
    problems: list[str] = []

    def timed(what: str, call: Callable[[], Any], expected: Any) -> None:
        started = time.monotonic()
        try:
            got = call()
        except Exception as exc:
            problems.append(f"{alias} {what}: {exc!r}")
            return
        took = time.monotonic() - started
        if got != expected:
            problems.append(f"{alias} {what}: {got!r} != {expected!r}")
        if took > 1.0:
            problems.append(f"{alias} {what}: {took:.2f}s")

    keys = {f"{tag}{i}": i for i in range(20)}
    timed("set", lambda: cache.set(tag, tag), None)
    timed("get", lambda: cache.get(tag), tag)
    timed("set_many", lambda: cache.set_many(keys), [])
    timed("get_many", lambda: cache.get_many(list(keys)), keys)
    timed("incr", lambda: cache.incr(f"{tag}1", 10), 11)
    timed("aget", lambda: asyncio.run(cache.aget(tag)), tag)
    timed("aset_many", lambda: asyncio.run(cache.aset_many(keys)), [])
    timed("aget_many", lambda: asyncio.run(cache.aget_many(list(keys))), keys)
    return problems


def _client_id(alias: str) -> int | None:
    topology = caches[alias].core.topology
    if "Memcache" in type(topology).__name__:
        return None  # no such command: the concurrent use below shows the sockets apart
    return int(topology.shards()[0].execute(b"CLIENT", b"ID"))


def test_a_forked_worker_gets_its_own_connections_and_threads(
    request: pytest.FixtureRequest,
) -> None:
    deployments = {kind: deployment_of(kind, request) for kind in KINDS}
    with override_settings(CACHES={kind: d.entry for kind, d in deployments.items()}):
        for kind in KINDS:  # the warm-up: every topology used, sync and async
            assert _use_every_call(kind, "parent") == []
        parent_ids = {kind: _client_id(kind) for kind in KINDS}
        sentinel_watchers = caches["sentinel"].core.topology.threads
        assert sentinel_watchers
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report, then leave without running the parent's exit code
            os.close(reader)
            problems: list[str] = []
            try:
                for kind in KINDS:
                    problems += _use_every_call(kind, "child")
                child_ids = {kind: _client_id(kind) for kind in KINDS}
                for kind in KINDS:
                    if child_ids[kind] is not None and child_ids[kind] == parent_ids[kind]:
                        problems.append(f"{kind}: the child used the parent's connection")
                if not caches["sentinel"].core.topology.threads:
                    problems.append("sentinel: no watcher runs in the child")
            except BaseException as exc:
                problems.append(repr(exc))
            finally:
                os.write(writer, json.dumps(problems).encode())
                os._exit(0)
        os.close(writer)
        # Meanwhile the parent keeps working on the same servers.
        deadline = time.monotonic() + 60
        rounds = 0
        while not select.select([reader], [], [], 0)[0] and time.monotonic() < deadline:
            for kind in KINDS:
                assert _use_every_call(kind, f"parent{rounds}-") == []
            rounds += 1
        assert select.select([reader], [], [], max(0.0, deadline - time.monotonic()))[0]
        report = b""
        while chunk := os.read(reader, 65536):
            report += chunk
        os.close(reader)
        os.waitpid(pid, 0)
        assert json.loads(report) == []
        assert rounds >= 1
        for kind in KINDS:
            assert _client_id(kind) == parent_ids[kind]  # the parent's socket, untouched
            assert caches[kind].get("child") == "child"  # the child's writes are there
        assert all(watcher.is_alive() for watcher in sentinel_watchers)


# --- shared state --------------------------------------------------------------------------


def test_shard_states_set_in_one_thread_are_seen_by_another(
    clean_memcached_servers: MemcachedServers,
) -> None:
    entry = {
        "BACKEND": "shardcache_django.cache.ShardedMemcacheCache",
        "LOCATION": clean_memcached_servers.addresses,
    }
    with override_settings(CACHES={"default": entry}):
        caches["default"].set("k", 1)
        changed = threading.Event()
        seen: list[Any] = []

        def other_thread() -> None:  # its own backend object, as Django makes per thread
            backend = caches["default"]
            assert backend.get("k") == 1
            changed.wait(10)
            seen.extend([backend is not caches_of_main, backend.get("k"), backend.add("x", 1)])

        caches_of_main = caches["default"]
        thread = threading.Thread(target=other_thread)
        thread.start()
        down = [ShardState(a, MemcachedState.DOWN) for a in clean_memcached_servers.addresses]
        caches_of_main.update_shard_states(down)
        changed.set()
        thread.join(10)
        assert seen == [True, None, False]  # a DOWN shard: a miss, and add is "not stored"
        caches_of_main.update_shard_states(clean_memcached_servers.addresses)
        assert caches["default"].get("k") == 1


def test_flask_apps_and_django_with_the_same_settings_share_one_topology(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    from flask import Flask

    backends = []
    for _ in range(3):
        app = Flask(__name__)
        config = {"CACHE_SHARDCACHE_SERVERS": clean_redis_pool_servers.urls}
        backends.append(FlaskShardedRedisCache.factory(app, config, [], {}))
    entry = {
        "BACKEND": "shardcache_django.cache.ShardedRedisCache",
        "LOCATION": clean_redis_pool_servers.urls,
    }
    with override_settings(CACHES={"default": entry}):
        django_topology = caches["default"].core.topology
    assert {id(b.core.topology) for b in backends} == {id(django_topology)}
    assert len(registry.topologies()) == 1


def test_flask_async_views_leave_no_loop_and_no_connection_behind(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    from flask import Flask
    from flask_caching import Cache as FlaskCache

    app = Flask(__name__)
    cache = FlaskCache(
        app,
        config={
            "CACHE_TYPE": "shardcache_flask.ShardedRedisCache",
            "CACHE_SHARDCACHE_SERVERS": clean_redis_pool_servers.urls,
        },
    )
    loops: list[Any] = []

    @app.get("/<int:n>")
    async def view(n: int) -> str:  # Flask runs each in a new event loop (async_to_sync)
        loops.append(weakref.ref(asyncio.get_running_loop()))
        core = cache.cache.core
        await core.aset(f"f{n}", n)
        found = await core.aget_many([f"f{n}", "absent"])
        return str(found[f"f{n}"])

    count = _redis_clients(clean_redis_pool_servers.servers)
    client = app.test_client()
    before = count()
    for n in range(200):
        assert client.get(f"/{n}").text == str(n)
    assert count() <= before
    assert settles(lambda: all(loop() is None for loop in loops))
