"""What this process holds: its open sockets and shardcache's threads, to check that what a
test opened is closed again."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable


def open_sockets() -> set[str]:
    """The socket inodes this process has open (``socket:[123]``)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


def our_threads() -> set[threading.Thread]:
    """shardcache's threads alive now (every thread it starts is named ``shardcache-...``)."""
    return {t for t in threading.enumerate() if t.name.startswith("shardcache-")}


def settles(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``check()`` becomes true within ``timeout`` (collecting garbage between tries:
    a closed socket may wait for its object to go)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
