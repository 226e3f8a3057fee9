"""The structure the code promises (issue 15): no import cycle, one wire module that imports
nothing of shardcache, each topology family speaking its own protocol, declared capabilities
asked before any I/O, and every private name of another project with a working fallback."""

from __future__ import annotations

import ast
import asyncio
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

import shardcache
from shardcache import Cache, ConfigurationError, HashPool, MemcacheTopology, wire
from shardcache.aio import pool_for
from shardcache.connections import RedisShard
from shardcache.dialects import REDIS
from shardcache.protocols import Dialect
from shardcache.records import RedisRecordStore
from shardcache.testing import MemcachedServers, StandaloneRedis
from shardcache.topologies.memcache import ShardedMemcacheClient, StaticShardManager
from shardcache.topologies.memcache.topology import MEMCACHE, Op

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shardcache", "shardcache_django", "shardcache_flask")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, package: str) -> set[str]:
    """Every module of ours that ``path`` imports at run time, at any depth of its code
    (imports inside functions count: they run too), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    files = {
        _module_name(path): path
        for name in PACKAGES
        for path in (ROOT / name).rglob("*.py")
        if "migrations" not in path.parts
    }
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph[module] = {
            name
            for name in _imports(path, package)
            if name in files and name != module and not module.startswith(name + ".")
        }
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for after in sorted(graph[node]):
            if state.get(after) == 1:
                return [*stack[stack.index(after) :], after]
            if after not in state and (found := walk(after)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert "shardcache.cache" in graph
    assert "shardcache.aio" in graph["shardcache.drivers"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = _graph()
    graph["shardcache.wire"] = graph["shardcache.wire"] | {"shardcache.aio"}
    assert _cycle(graph) is not None


def test_the_wire_imports_nothing_of_ours_and_the_drivers_do_not_import_each_other() -> None:
    graph = _graph()
    assert graph["shardcache.wire"] == set()
    assert "shardcache.aio" not in graph["shardcache.connections"]
    assert "shardcache.connections" not in graph["shardcache.aio"]


def test_both_dialects_answer_every_want_of_the_protocol() -> None:
    wants = {name for name in vars(Dialect) if not name.startswith("_")}
    for dialect in (REDIS, MEMCACHE):
        assert wants <= set(dir(dialect)), wants - set(dir(dialect))
    for name in ("get", "exists", "pttl"):
        assert isinstance(getattr(MEMCACHE, name)(b"k")[0], Op)
        assert isinstance(getattr(REDIS, name)(b"k")[0], bytes)


# --- memcache speaks memcache -------------------------------------------------------------


@pytest.fixture
def memcache(clean_memcached_servers: MemcachedServers) -> Iterator[Cache]:
    client = ShardedMemcacheClient(StaticShardManager(clean_memcached_servers.addresses))
    yield Cache(MemcacheTopology(client), prefix="t:")
    client.close()


def test_a_memcache_shard_refuses_a_redis_command(memcache: Cache) -> None:
    shard = memcache.topology.shard_for(b"t:k")
    with pytest.raises(TypeError, match="not a memcache operation"):
        shard.execute(b"SET", b"t:k", b"v")
    with pytest.raises(TypeError, match="not a memcache operation"):
        shard.execute(b"EVALSHA", b"0" * 40, 1, b"t:k", 1)
    assert memcache.get("k") is None  # nothing was written


def test_what_memcache_cannot_do_is_refused_before_any_io(memcache: Cache) -> None:
    memcache.topology.close()  # any I/O would now raise ClosedError
    with pytest.raises(ConfigurationError, match="'scan' capability"):
        memcache.clear()
    with pytest.raises(ConfigurationError, match="'locks' capability"):
        memcache.lock("job")
    with pytest.raises(ConfigurationError, match="Lua script"):
        RedisRecordStore(memcache.topology)


def test_redis_topologies_have_no_shard_states(clean_redis_pool_servers: StandaloneRedis) -> None:
    cache = Cache(HashPool(clean_redis_pool_servers.urls))
    with pytest.raises(ConfigurationError, match="'shard_states' capability"):
        cache.update_shard_states(["127.0.0.1:1"])
    cache.close()


# --- every public call has its async twin -------------------------------------------------

# redis_client does no I/O: it hands out redis-py's (sync) client for the key's server.
# stats is for operators (a command, a metrics scrape), not for request paths.
SYNC_ONLY = {"make_key", "close", "update_shard_states", "alock", "redis_client", "stats"} | {
    "where",
    "metrics",
}


def test_every_public_cache_method_has_an_async_twin() -> None:
    public = {
        name
        for name, member in vars(Cache).items()
        if callable(member) and not name.startswith("_") and name not in SYNC_ONLY
    }
    sync = {name for name in public if not inspect.iscoroutinefunction(vars(Cache)[name])}
    missing = {
        name for name in sync if not inspect.iscoroutinefunction(getattr(Cache, "a" + name, None))
    }
    assert missing == {"lock"}  # its twin is `alock`, which returns the same Lock
    assert callable(Cache.alock)


# --- private names and their fallbacks ----------------------------------------------------


def test_every_private_name_is_listed_and_only_redis_py_ones_are_used() -> None:
    assert all(name.startswith("redis.") for name in wire.PRIVATE_NAMES)
    listed = {name.rpartition(".")[2] for name in wire.PRIVATE_NAMES}
    used: set[str] = set()
    for name in PACKAGES:
        for path in (ROOT / name).rglob("*.py"):
            if path.name == "wire.py" or "testing" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and ast.unparse(node.func) == "getattr"
                    and len(node.args) > 1
                    and isinstance(node.args[1], ast.Constant)
                    and str(node.args[1].value).startswith("_")
                ):
                    used.add(f"{path.name}:{node.args[1].value}")
    assert used == set(), f"private names read outside shardcache.wire: {used}"
    assert {"_sock", "_parser", "_reader", "_writer"} <= listed


@pytest.mark.parametrize("hidden", ["_SOCK", "_PARSER", "_READER"])
def test_without_each_sync_private_name_commands_still_work(
    hidden: str, clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if redis-py renamed the attribute: shardcache looks for a name that is not there.
    monkeypatch.setattr(wire, hidden, "_renamed_by_a_future_redis_py")
    cache = Cache(HashPool(clean_redis_pool_servers.urls), prefix="t:")
    items = {f"k{i}": i for i in range(50)}
    assert cache.set_many(items) == []
    assert cache.get_many(items) == items
    assert asyncio.run(cache.aget_many(items)) == items
    assert cache.incr("k1", 5) == 6
    assert cache.get("k1") == 6
    cache.close()


def test_the_fallbacks_really_run(
    clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = Cache(HashPool(clean_redis_pool_servers.urls), prefix="t:")
    cache.set("k", 1)
    shard = cache.topology.shards()[0]
    assert isinstance(shard, RedisShard)
    conn = shard.pool.acquire()
    conn.connect()
    assert wire.is_open(conn)
    assert (wire._hiredis_of(conn)[0] is not None) == (wire.HiredisReader is not None)
    monkeypatch.setattr(wire, "_SOCK", "_renamed")
    monkeypatch.setattr(wire, "_READER", "_renamed")
    assert not wire.is_open(conn)
    assert wire._hiredis_of(conn) == (None, None)  # so redis-py reads reply by reply
    shard.pool.release(conn)
    cache.close()


def test_an_asyncio_connection_is_closed_without_its_writer_name(
    clean_redis_pool_servers: StandaloneRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wire, "_WRITER", "_renamed")
    cache = Cache(HashPool(clean_redis_pool_servers.urls), prefix="t:")
    shard = cache.topology.shards()[0]

    async def scenario() -> bool:
        pool = pool_for(shard)
        assert pool is not None
        conn = await pool.acquire()
        await conn.connect()
        assert conn.is_connected
        wire.drop_async(conn)  # falls back to redis-py's own disconnect on this loop
        for _ in range(100):
            if not conn.is_connected:
                return True
            await asyncio.sleep(0.01)
        return False

    assert asyncio.run(scenario())
    cache.close()


def test_shardcache_exports_are_importable() -> None:
    for name in shardcache.__all__:
        assert getattr(shardcache, name) is not None
