"""The shardcache demo: the example site and the Flask app, served on real ports over a local
topology of real servers, and driven over HTTP.

Run it with ``./dev demo``. It starts the local servers (3 Redis, a 6-node Redis Cluster,
two Sentinel-managed masters, 3 memcached), migrates the example project, serves it under
uvicorn (ASGI) and the Flask app under Werkzeug, each on a free port, and then:

- sends traffic to every backend's pages and reports each one's hit ratio (from the
  servers' own counters) and request latency;
- shows how the keys spread over the shards;
- fails a sentinel master over during traffic: the sessions survive;
- takes a memcached shard DOWN, then WARM_UP, then ACTIVE while the site serves;
- queues and claims jobs, then prints ``manage.py shardcache_records leases`` and ``sync``.

It stops every process it started, on Ctrl-C too, and exits 0 only if every step worked.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
from pymemcache.client.base import Client as MemcacheClient

from example_project.servers import Servers
from shardcache.testing import LocalTopology, format_health, pick_port

ROOT = Path(__file__).resolve().parent.parent


class Http:
    """A browser of one site: cookies kept, each request timed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.timings: dict[str, list[float]] = {}

    def call(self, path: str, data: Any = None, *, group: str | None = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.base + path, data=body)
        began = time.perf_counter()
        with self.opener.open(request, timeout=10) as response:
            payload = response.read()
            kind = response.headers.get("Content-Type", "")
        self.timings.setdefault(group or path, []).append(time.perf_counter() - began)
        return json.loads(payload) if kind.startswith("application/json") else payload.decode()


@contextlib.contextmanager
def serving(name: str, argv: list[str], env: dict[str, str], port: int) -> Iterator[Http]:
    """``argv`` serving HTTP on ``port`` until the block ends (then stopped, always)."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield _ready(name, process, log, Http(f"http://127.0.0.1:{port}"))
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _ready(name: str, process: subprocess.Popen[bytes], log: Any, site: Http) -> Http:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(site.base + "/", timeout=2):
                return site
        except urllib.error.HTTPError:
            return site  # it answers: serving
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"{name} did not serve: {log.read()[-2000:]!r}") from None
            time.sleep(0.1)


def manage(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, str(ROOT / "example_project" / "manage.py"), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)}: {done.stderr.strip()[-500:]}")
    return done.stdout


# --- what the servers say ------------------------------------------------------------------


def redis_counters(urls: list[str]) -> dict[str, tuple[int, int, int]]:
    """address -> (hits, misses, keys) from each server's INFO."""
    found = {}
    for url in urls:
        with redis.Redis.from_url(url if "://" in url else f"redis://{url}") as conn:
            stats = conn.info("stats")
            found[url.split("//")[-1].split("/")[0]] = (
                int(stats["keyspace_hits"]),
                int(stats["keyspace_misses"]),
                int(conn.dbsize()),
            )
    return found


def memcache_counters(addresses: list[str]) -> dict[str, tuple[int, int, int]]:
    found = {}
    for address in addresses:
        host, _, port = address.rpartition(":")
        client = MemcacheClient((host, int(port)), connect_timeout=2, timeout=2)
        try:
            stats = {k.decode(): v for k, v in client.stats().items()}
        finally:
            client.close()
        found[address] = (
            int(stats["get_hits"]),
            int(stats["get_misses"]),
            int(stats["curr_items"]),
        )
    return found


class Backend:
    """One CACHES alias: the servers it lives on and the pages that use it."""

    def __init__(self, alias: str, kind: str, count: Callable[[], dict[str, Any]], pages: str):
        self.alias, self.kind, self.count, self.pages = alias, kind, count, pages
        self.before: dict[str, Any] = {}

    def start(self) -> None:
        self.before = self.count()

    def report(self, site: Http) -> str:
        after = self.count()
        hits = sum(after[a][0] - self.before.get(a, (0, 0, 0))[0] for a in after)
        misses = sum(after[a][1] - self.before.get(a, (0, 0, 0))[1] for a in after)
        ratio = hits / (hits + misses) if hits + misses else 0.0
        times = sorted(site.timings.get(self.pages, [0.0]))
        p50 = statistics.median(times) * 1000
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
        spread = ", ".join(f"{address} {after[address][2]}" for address in sorted(after))
        return (
            f"{self.kind:<21} hit ratio {ratio:5.1%} ({hits} hits, {misses} misses)"
            f"  {self.pages} p50 {p50:.1f} ms p99 {p99:.1f} ms\n"
            f"{'':<10}keys per server: {spread}"
        )


# --- the steps -------------------------------------------------------------------------------


def traffic(site: Http, flask: Http, rounds: int = 150) -> str:
    for i in range(rounds):
        site.call("/", group="/")
        site.call(f"/products/{i % 20 + 1}/", group="/products/")
        site.call("/session/", group="/session/")
        site.call(f"/memcache/user{i % 30}/", group="/memcache/")
        if i % 3 == 0:
            site.call("/stats/", group="/stats/")
        flask.call(f"/quote/item{i % 10}/2", group="/quote/")
    count = site.call("/session/", group="/session/")["count"]
    if count != rounds + 1:
        raise AssertionError(f"the session counted {count}, not {rounds + 1}")
    return f"{rounds * 6 + rounds // 3} requests to the Django site and the Flask app"


def failover(site: Http, local: LocalTopology, servers: Servers) -> str:
    """Fail over the master that holds the sessions (the one with keys) under traffic."""

    def keys(name: str) -> int:
        host, port = local.sentinel.master_address(name)
        with redis.Redis(host=host, port=port) as conn:
            return int(conn.dbsize())

    name = max(servers.sentinel_masters, key=keys)
    before = site.call("/session/", group="/session/")["count"]
    failed: list[str] = []
    old = local.sentinel.master_address(name)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        promoted: list[Any] = []
        thread = _background(lambda: promoted.append(local.sentinel.failover(name)))
        stack.callback(thread.join, 60)
        count = before
        while thread.is_alive() or time.monotonic() - started < 1:
            try:
                count = site.call("/session/", group="/session/")["count"]
            except OSError as exc:
                failed.append(str(exc))
            time.sleep(0.01)
    count = site.call("/session/", group="/session/")["count"]
    new = local.sentinel.master_address(name)
    if new == old:
        raise AssertionError(f"{name} did not move from {old[0]}:{old[1]}")
    if count <= before:
        raise AssertionError(f"the session restarted: {count} after {before}")
    return (
        f"{name} moved {old[0]}:{old[1]} -> {new[0]}:{new[1]} under traffic; the session "
        f"counted on from {before} to {count}, {len(failed)} failed requests"
    )


def _background(action: Callable[[], Any]) -> Any:
    import threading

    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def memcache_states(site: Http, servers: Servers) -> str:
    first, *rest = servers.memcached
    states = [[address, "ACTIVE"] for address in rest]
    served = 0
    for step in (
        [[first, "DOWN"], *states],
        [[first, "WARM_UP", rest[0]], *states],
        [[first, "ACTIVE"], *states],
    ):
        site.call("/ops/memcache-states/", step, group="ops")
        for i in range(60):
            answer = site.call(f"/memcache/user{i}/", group="/memcache/")
            if answer["value"] != f"user{i}" and answer["value"] != f"hello user{i}":
                raise AssertionError(f"memcache view answered {answer}")
            served += 1
    return f"{first}: DOWN -> WARM_UP (from {rest[0]}) -> ACTIVE; {served} requests served"


def jobs(site: Http, env: dict[str, str]) -> str:
    for i in range(3):
        site.call("/jobs/", {"id": f"j{i}", "task": f"report {i}"}, group="jobs")
    claimed = [site.call("/jobs/claim/", {"worker": f"w{i}"}, group="jobs") for i in range(2)]
    feed = site.call("/jobs/changes/?since=0", group="jobs")["changes"]
    if [c["claimed"] for c in claimed] != ["j0", "j1"] or len(feed) != 5:
        raise AssertionError(f"claims {claimed}, feed {feed}")
    print(_indent(manage(env, "shardcache_records", "leases")))
    print(_indent(manage(env, "shardcache_records", "sync", "job")))
    return "3 jobs queued, 2 claimed under leases, 5 changes in the feed"


def cache_info(env: dict[str, str]) -> str:
    """``manage.py shardcache_cache info``: every server of every cache, as the site sees it."""
    print(_indent(manage(env, "shardcache_cache", "info")))
    rows = [
        json.loads(line) for line in manage(env, "shardcache_cache", "info", "--json").splitlines()
    ]
    down = [row["address"] for row in rows if not row["reachable"]]
    if down:
        raise AssertionError(f"unreachable: {down}")
    return f"manage.py shardcache_cache info: {len(rows)} servers in 4 caches, all reachable"


def _indent(text: str) -> str:
    return "\n".join("          " + line for line in text.rstrip().splitlines())


def step(name: str, action: Callable[[], str]) -> bool:
    print(f"  ...   {name}", flush=True)
    began = time.perf_counter()
    try:
        result = action()
    except Exception as exc:  # the demo reports every failure and carries on
        print(f"  FAIL  {name:<20} {exc!r}", flush=True)
        return False
    print(f"  ok    {name:<20} {result}  ({time.perf_counter() - began:.1f} s)", flush=True)
    return True


def main() -> int:
    print("shardcache demo: starting the local servers ...", flush=True)
    results: list[bool] = []
    try:
        with LocalTopology() as local, tempfile.TemporaryDirectory() as scratch:
            print(f"19 servers ready in {local.startup_seconds:.1f}s\n", flush=True)
            rows = local.health()
            print(format_health(rows))
            results.append(all(row.ok for row in rows))
            servers = Servers.of_local(local)
            env = {
                **os.environ,
                **servers.environment(),
                "SHARDCACHE_EXAMPLE_DB": str(Path(scratch) / "example.sqlite3"),
                "DJANGO_SETTINGS_MODULE": "example_project.site.settings",
                "PYTHONPATH": str(ROOT),
            }
            results.append(step("migrate", lambda: _migrated(env)))
            django_port, flask_port = pick_port(), pick_port()
            uvicorn = [sys.executable, "-m", "uvicorn", "example_project.site.asgi:application"]
            uvicorn += ["--host", "127.0.0.1", "--port", str(django_port), "--log-level", "warning"]
            flask = [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "example_project.flask_app:create_app()",
            ]
            flask += ["run", "--host", "127.0.0.1", "--port", str(flask_port)]
            with (
                serving("the Django site (uvicorn)", uvicorn, env, django_port) as site,
                serving("the Flask app (werkzeug)", flask, env, flask_port) as flask_site,
            ):
                print(
                    f"\nserving: Django under uvicorn at {site.base}, Flask at {flask_site.base}\n",
                    flush=True,
                )
                backends = _backends(servers)
                for backend in backends:
                    backend.start()
                results.append(step("traffic", lambda: traffic(site, flask_site)))
                print("\nper backend (the servers' own counters; latency seen by the client):")
                for backend in backends:
                    results.append(step(backend.alias, _reporting(backend, site)))
                quotes = sorted(flask_site.timings["/quote/"])
                print(
                    f"flask     RedisClusterCache   /quote/ (@cached, @memoize) p50 "
                    f"{statistics.median(quotes) * 1000:.1f} ms p99 {quotes[-2] * 1000:.1f} ms\n"
                )
                results.append(step("cache info", lambda: cache_info(env)))
                results.append(step("sentinel failover", lambda: failover(site, local, servers)))
                results.append(step("memcache states", lambda: memcache_states(site, servers)))
                results.append(step("record store", lambda: jobs(site, env)))
            print("\nstopping ...", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started is stopped", flush=True)
        return 130
    ok = bool(results) and all(results)
    print("done: every server healthy, every step worked" if ok else "done: FAILED")
    return 0 if ok else 1


def _reporting(backend: Backend, site: Http) -> Callable[[], str]:
    return lambda: backend.report(site)


def _migrated(env: dict[str, str]) -> str:
    manage(env, "migrate", "-v", "0")
    checked = manage(env, "check")
    return f"example project migrated on SQLite; manage.py check: {checked.strip()}"


def _backends(servers: Servers) -> list[Backend]:
    cluster = [f"redis://{node}" for node in servers.cluster_nodes]
    return [
        Backend("default", "RedisClusterCache", lambda: redis_counters(cluster), "/stats/"),
        Backend(
            "sessions",
            "RedisSentinelCache",
            lambda: redis_counters(_sentinel_masters(servers)),
            "/session/",
        ),
        Backend(
            "pool", "ShardedRedisCache", lambda: redis_counters(servers.redis_urls), "/products/"
        ),
        Backend(
            "memcache",
            "ShardedMemcacheCache",
            lambda: memcache_counters(servers.memcached),
            "/memcache/",
        ),
    ]


def _sentinel_masters(servers: Servers) -> list[str]:
    host, _, port = servers.sentinels[0].rpartition(":")
    with redis.Redis(host=host, port=int(port)) as sentinel:
        found = []
        for name in servers.sentinel_masters:
            host, port = sentinel.sentinel_get_master_addr_by_name(name)
            found.append(f"redis://{host.decode() if isinstance(host, bytes) else host}:{port}")
        return found


if __name__ == "__main__":
    sys.exit(main())
