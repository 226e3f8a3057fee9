"""Memcache shard states shared by every process through one small JSON file.

An operator (``manage.py shardcache_cache states set``, ``flask shardcache states set``, or
`StatesFile.write`) rewrites the file atomically; each process looks at it on its calls, at
most every ``every`` seconds (one ``stat``), and applies a changed file to its own shard
manager. No thread and no server: it works in forked workers as in threads, and a change
reaches every running process within ``every`` seconds of its next call.

The file is ``[["host:port", "STATE"], ["host:port", "WARM_UP", "source:port"], ...]``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from shardcache.errors import ConfigurationError
from shardcache.topologies.memcache.model import MemcachedState, ShardState

__all__ = ["StatesFile"]

logger = logging.getLogger(__name__)


class StatesFile:
    """The states in ``path``, applied to ``manager`` (`ShardManager.update_shard_states`)
    when the file changes."""

    def __init__(self, path: str | os.PathLike[str], manager: Any, *, every: float = 0.25) -> None:
        self.path = Path(path)
        self.manager = manager
        self.every = every
        self._next = 0.0
        self._seen: tuple[int, int, int] | None = None

    def poll(self) -> None:
        """Apply the file if it changed since the last look (looks at most every
        ``every`` seconds; a missing or unreadable file keeps the states as they are)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every
        try:
            stat = self.path.stat()
        except OSError:
            return
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            states = self.read(self.path)
        except (OSError, ConfigurationError) as exc:
            logger.warning("shardcache: memcache states file %s not applied: %s", self.path, exc)
            return
        before = {h.address: h.state for h in self.manager.get_all_shards()}
        self.manager.update_shard_states(states)
        changed = [s for s in states if before.get(s.address) is not s.state]
        if changed:
            logger.warning(
                "shardcache: memcache shard states from %s: %s",
                self.path,
                ", ".join(f"{s.address} {s.state.value}" for s in changed),
            )

    @staticmethod
    def read(path: str | os.PathLike[str]) -> list[ShardState]:
        try:
            entries = json.loads(Path(path).read_text())
        except json.JSONDecodeError as exc:
            raise ConfigurationError(f"{path}: not JSON ({exc})") from exc
        states = []
        for entry in entries:
            if not isinstance(entry, list) or not 2 <= len(entry) <= 3:
                raise ConfigurationError(f"{path}: {entry!r} is not [address, state(, source)]")
            try:
                state = MemcachedState(str(entry[1]).upper())
            except ValueError:
                raise ConfigurationError(f"{path}: unknown state {entry[1]!r}") from None
            states.append(ShardState(str(entry[0]), state, entry[2] if len(entry) == 3 else None))
        return states

    @staticmethod
    def write(path: str | os.PathLike[str], states: list[ShardState]) -> None:
        """Replace the file atomically (a reader sees the old or the new list, whole)."""
        target = Path(path)
        rows = [
            [s.address, s.state.value, *([s.warm_source] if s.warm_source else [])] for s in states
        ]
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(rows, out)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
