"""`shardcache.lifecycle.Workers`: the daemon threads behind memcache's batches."""

from __future__ import annotations

import os
import threading
import time

import pytest

from shardcache import ClosedError, lifecycle
from shardcache.lifecycle import Workers


def test_threads_are_named_daemons_started_on_demand_and_bounded() -> None:
    workers = Workers("shardcache-test", 3)
    assert workers.threads == []
    release = threading.Event()
    futures = [workers.submit(release.wait, 10) for _ in range(5)]
    assert len(workers.threads) == 3
    assert all(t.daemon and t.name.startswith("shardcache-test-") for t in workers.threads)
    release.set()
    assert [f.result(timeout=10) for f in futures] == [True] * 5
    assert workers.submit(lambda: 7).result(timeout=10) == 7
    assert len(workers.threads) == 3  # idle ones were reused
    workers.close()
    assert workers.threads == []
    with pytest.raises(ClosedError):
        workers.submit(lambda: 1)


def test_an_error_is_the_futures(monkeypatch: pytest.MonkeyPatch) -> None:
    workers = Workers("shardcache-test", 2)
    with pytest.raises(ZeroDivisionError):
        workers.submit(lambda: 1 / 0).result(timeout=10)
    workers.close()


def test_idle_threads_end_and_come_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lifecycle, "_IDLE_LIFETIME", 0.1)
    workers = Workers("shardcache-test", 2)
    assert workers.submit(lambda: 1).result(timeout=10) == 1
    deadline = time.monotonic() + 10
    while workers.threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers.threads == []
    assert workers.submit(lambda: 2).result(timeout=10) == 2
    workers.close()


def test_a_forked_child_gets_threads_of_its_own() -> None:
    workers = Workers("shardcache-test", 2)
    assert workers.submit(os.getpid).result(timeout=10) == os.getpid()
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            ok = workers.submit(os.getpid).result(timeout=5) == os.getpid()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert workers.submit(os.getpid).result(timeout=10) == os.getpid()
    workers.close()
