"""The example project under test: the Django site through Django's test client (sessions
across a sentinel failover), the Flask app through Flask's, the site under uvicorn over
HTTP, and the demo interrupted with Ctrl-C leaving nothing behind."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import caches
from django.test import Client, override_settings

from example_project import demo
from example_project.servers import Servers
from shardcache.testing import (
    MemcachedServers,
    RedisCluster,
    RedisSentinel,
    StandaloneRedis,
    pick_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def servers(
    clean_redis_pool_servers: StandaloneRedis,
    clean_redis_cluster: RedisCluster,
    clean_redis_sentinel: RedisSentinel,
    clean_memcached_servers: MemcachedServers,
) -> Servers:
    sentinel = clean_redis_sentinel.describe()
    return Servers(
        redis_urls=clean_redis_pool_servers.urls,
        cluster_nodes=clean_redis_cluster.describe()["startup_nodes"],
        sentinels=sentinel["sentinels"],
        sentinel_masters=sentinel["names"],
        memcached=clean_memcached_servers.addresses,
    )


@pytest.fixture
def site_settings(servers: Servers, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The example project's own settings module, read with these servers."""
    for name, value in servers.environment().items():
        monkeypatch.setenv(name, value)
    module = importlib.reload(importlib.import_module("example_project.site.settings"))
    names = ["CACHES", "SESSION_ENGINE", "SESSION_CACHE_ALIAS", "ROOT_URLCONF", "MIDDLEWARE"]
    names += ["TEMPLATES", "ALLOWED_HOSTS"]
    with override_settings(**{name: getattr(module, name) for name in names}):
        yield module


@pytest.mark.django_db(transaction=True)
def test_the_django_site_through_its_test_client(
    site_settings: Any, clean_redis_sentinel: RedisSentinel
) -> None:
    browser = Client()
    home = browser.get("/")
    assert home.status_code == 200
    assert b"Visit 1 of this session" in home.content
    assert b"catalogue rendered at" in home.content
    first = browser.get("/")
    assert b"Visit 2 of this session" in first.content
    rendered = first.content.split(b"catalogue rendered at ")[1]
    assert browser.get("/").content.split(b"catalogue rendered at ")[1] == rendered  # fragment

    product = browser.get("/products/3/")
    assert product.json()["pk"] == 3
    assert caches["pool"].keys("*")  # cache_page stored the response on the hash pool
    assert browser.get("/stats/").json()["views"] == 1  # the async view
    assert browser.get("/stats/").json()["views"] == 2
    assert browser.get("/memcache/ada/").json()["value"] == "hello ada"

    assert browser.post("/jobs/", {"id": "j1"}, content_type="application/json").json() == {
        "queued": "j1"
    }
    claimed = browser.post("/jobs/claim/", {"worker": "w1"}, content_type="application/json")
    assert claimed.json() == {"claimed": "j1", "worker": "w1"}
    feed = browser.get("/jobs/changes/?since=0").json()["changes"]
    assert [(c["id"], c["data"]["state"]) for c in feed] == [("j1", "queued"), ("j1", "running")]

    # The session lives on the sentinel masters: a failover of its master keeps it.
    count = browser.get("/session/").json()["count"]
    key = browser.cookies["sessionid"].value
    core = caches["sessions"].core
    name = core.topology.shard_for(
        core.make_key(caches["sessions"].make_key(f"django.contrib.sessions.cache{key}"))
    ).id
    clean_redis_sentinel.failover(name)
    wait_until(
        lambda: browser.get("/session/").status_code == 200, timeout=30, what="the site to serve"
    )
    assert browser.get("/session/").json()["count"] > count


def test_the_flask_app_through_its_test_client(servers: Servers) -> None:
    from example_project import flask_app

    app = flask_app.create_app(
        {
            "CACHE_TYPE": "shardcache_flask.RedisClusterCache",
            "CACHE_REDIS_CLUSTER": ",".join(servers.cluster_nodes),
            "CACHE_KEY_PREFIX": "example-test:",
        }
    )
    client = app.test_client()
    flask_app.computed.clear()
    first = client.get("/quote/tea/3").json
    assert client.get("/quote/tea/3").json == first
    assert flask_app.computed == ["quote(tea, 3)", "price(tea, 3)"]
    client.post("/reprice/tea/3")
    assert client.get("/quote/tea/3").json == first
    assert flask_app.computed[2:] == ["quote(tea, 3)", "price(tea, 3)"]


def test_the_site_under_uvicorn_over_http(servers: Servers, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **servers.environment(),
        "SHARDCACHE_EXAMPLE_DB": str(tmp_path / "db.sqlite3"),
        "DJANGO_SETTINGS_MODULE": "example_project.site.settings",
    }
    port = pick_port()
    argv = [sys.executable, "-m", "uvicorn", "example_project.site.asgi:application"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with demo.serving("uvicorn", argv, env, port) as site:
        assert "Visit 1 of this session" in site.call("/")
        assert "Visit 2 of this session" in site.call("/")
        assert site.call("/products/5/")["pk"] == 5
        assert site.call("/stats/")["stats:by"] == "async view"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_the_demo_interrupted_with_ctrl_c_leaves_no_process_behind() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "example_project.demo"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("serving:"):
                break
        else:
            raise AssertionError(f"the demo never served (exit {process.wait()})")
        started = _descendants(process.pid)
        assert len(started) >= 21  # 19 servers, uvicorn and flask
        process.send_signal(signal.SIGINT)
        rest = process.communicate(timeout=120)[0]
        assert process.returncode == 130, rest
        assert "interrupted" in rest
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in started if _alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
