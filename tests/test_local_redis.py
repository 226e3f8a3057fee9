"""shardcache.testing: standalone redis, memcached and the shared process machinery."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from shardcache.errors import BinaryNotFoundError
from shardcache.testing import MemcachedServers, StandaloneRedis, pick_port
from shardcache.testing._process import PORT_RANGE

DEFAULT_PORTS = {6379, 11211, 26379}


def test_picked_ports_avoid_default_and_ephemeral_ports() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [pick_port(with_bus=True) for _ in range(50)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        assert port not in DEFAULT_PORTS
        assert PORT_RANGE[0] <= port < PORT_RANGE[1]
        assert port + 10000 < ephemeral_low


def test_standalone_servers_are_independent_and_not_persistent(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    pool = clean_redis_pool_servers
    assert len(pool.urls) == 3
    for i, server in enumerate(pool.servers):
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as conn:
            conn.set("who", f"server{i}")
            assert conn.config_get("save") == {"save": ""}
            assert conn.config_get("appendonly") == {"appendonly": "no"}
            assert conn.config_get("bind")["bind"] == "127.0.0.1"
    for i, url in enumerate(pool.urls):
        with redis.Redis.from_url(url, decode_responses=True) as conn:
            assert conn.get("who") == f"server{i}"
            assert conn.dbsize() == 1


def test_flush_between_tests_leaves_servers_empty(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    for server in clean_redis_pool_servers.servers:
        with server.client() as conn:
            assert conn.dbsize() == 0


def test_killed_server_restarts_on_its_port(clean_redis_pool_servers: StandaloneRedis) -> None:
    pool = clean_redis_pool_servers
    victim = pool.servers[1]
    port, old_pid = victim.port, victim.pid
    pool.kill(victim)
    assert not victim.running
    with pytest.raises(redis.ConnectionError), victim.client() as conn:
        conn.ping()
    pool.restart(victim)
    assert victim.port == port
    assert victim.pid != old_pid
    assert victim.ping()


def test_every_memcached_answers_version(clean_memcached_servers: MemcachedServers) -> None:
    servers = clean_memcached_servers.servers
    assert len(servers) == 3
    for i, server in enumerate(servers):
        assert server.version().startswith("1.")
        conn = server.client()
        try:
            conn.set("who", f"server{i}".encode())
            assert conn.get("who") == f"server{i}".encode()
        finally:
            conn.close()
    assert all(row.ok for row in clean_memcached_servers.health())


def test_missing_binary_is_a_loud_error_naming_the_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    topology = StandaloneRedis(1)
    with pytest.raises(BinaryNotFoundError, match=r"redis-server not found.*apt-get install"):
        topology.start()
    assert topology.root is not None
    assert not topology.root.exists()
