"""Whole sets of servers: startup time, and no process left behind however a run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from shardcache.testing import LocalTopology, ServerProcess, wait_until
from shardcache.testing._process import pid_is_server

SERVER_BINARIES = ("redis-server", "redis-sentinel", "memcached")


def alive(pids: Iterable[int]) -> list[int]:
    """The pids still running one of our server binaries (zombies count as gone)."""
    return [pid for pid in pids if any(pid_is_server(pid, name) for name in SERVER_BINARIES)]


def all_gone(pids: list[int], timeout: float = 20.0) -> None:
    wait_until(lambda: not alive(pids), timeout=timeout, what=f"servers {alive(pids)} to exit")


def pids_of(processes: Iterable[ServerProcess]) -> list[int]:
    return [proc.pid for proc in processes if proc.pid is not None]


@pytest.mark.slow
def test_full_set_starts_quickly_and_stops_completely(
    shardcache_report: Callable[[str], None],
) -> None:
    local = LocalTopology()  # 3 standalone, cluster of 6, sentinel set of 4 + 3, 3 memcached
    with local:
        processes = [proc for part in local.parts.values() for proc in part]
        assert len(processes) == 3 + 6 + 7 + 3
        rows = local.health()
        assert [row for row in rows if not row.ok] == []
        assert local.startup_seconds is not None
        parts = ", ".join(f"{k} {p.startup_seconds:.2f}s" for k, p in local.parts.items())
        shardcache_report(
            f"full set (19 servers) started in {local.startup_seconds:.2f}s (budget 15s; {parts})"
        )
        pids = pids_of(processes)
        roots = [part.root for part in local.parts.values()]
    all_gone(pids)
    assert not any(root is not None and root.exists() for root in roots)


INNER_TEST = """
import json, os

def test_uses_every_fixture(redis_pool_servers, redis_cluster, redis_sentinel, memcached_servers):
    pids = [p.pid for t in (redis_pool_servers, redis_cluster, redis_sentinel, memcached_servers)
            for p in t.processes]
    with open(os.environ["PIDS_FILE"], "w") as f:
        json.dump(pids, f)
"""


@pytest.mark.slow
def test_a_pytest_session_leaves_no_server_running(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    pids_file = tmp_path / "pids.json"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    plugins_off = ["-p", "no:cacheprovider", "-p", "no:django"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *plugins_off, str(tmp_path)],
        cwd=tmp_path,
        env={**env, "PIDS_FILE": str(pids_file)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shardcache local servers" in result.stdout  # startup times in the summary
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 3 + 6 + 7 + 3
    assert alive(pids) == []  # stopped before the session ended, not eventually


HOLDER = """
import json, sys, time
from shardcache.testing import MemcachedServers, RedisSentinel, StandaloneRedis
parts = [StandaloneRedis(2), MemcachedServers(1), RedisSentinel(["solo"], sentinels=1, quorum=1)]
for part in parts:
    part.start()
print(json.dumps([p.pid for part in parts for p in part.processes]), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL])
def test_an_interrupted_run_leaves_no_orphans(sig: signal.Signals) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        pids = json.loads(holder.stdout.readline() or "[]")
        assert len(pids) == 2 + 1 + 2 + 1, holder.stderr.read() if holder.stderr else ""
        assert len(alive(pids)) == len(pids)
        holder.send_signal(sig)
        holder.wait(timeout=30)
        all_gone(pids)
    finally:
        holder.kill()
        holder.wait()


def run_cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shardcache.testing", *args, "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_up_status_down(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    try:
        up = run_cli("up", "--standalone", "2", "--memcached", "1", state=state)
        assert up.returncode == 0, up.stderr
        assert "redis://127.0.0.1:" in up.stdout
        saved = json.loads(state.read_text())
        pids = [pid for part in saved["parts"].values() for pid in part["pids"]]
        assert len(alive(pids)) == 3  # they outlived the command

        status = run_cli("status", state=state)
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.count(" yes ") == 3

        again = run_cli("up", state=state)
        assert again.returncode == 1
        assert "already up" in again.stderr
    finally:
        down = run_cli("down", state=state)
    assert down.returncode == 0, down.stderr
    assert "stopped 3 server processes" in down.stdout
    assert not state.exists()
    all_gone(pids)
    assert not any(Path(part["root"]).exists() for part in saved["parts"].values())
    assert run_cli("status", state=state).returncode == 1


def test_pause_returns_once_every_thread_of_the_server_has_stopped() -> None:
    # memcached runs worker threads: a request sent right after pause() must find none
    # of them still running (kill() only queues SIGSTOP).
    from shardcache.testing import MemcachedServers

    with MemcachedServers(1) as memcached:
        server = memcached.servers[0]
        for _ in range(20):
            server.pause()
            tasks = Path(f"/proc/{server.pid}/task")
            states = {
                (tasks / tid / "stat").read_text().rsplit(")", 1)[1].split()[0]
                for tid in os.listdir(tasks)
            }
            server.resume()
            assert states <= {"T", "t"}, states
