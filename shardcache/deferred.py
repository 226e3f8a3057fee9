"""A topology whose servers were unreachable when it was first needed.

A cluster reads its slot map and a sentinel client asks the sentinels for their masters
when they are built. If those servers are down when a web process first uses its cache,
``ignore_errors`` must still mean misses, not an exception from the backend. The registry
then hands out a `Deferred` topology. Each call tries to build the real one, at most once
per ``retry_timeout`` seconds; until that succeeds, every call fails at once with
`ShardUnavailableError`, which ``ignore_errors`` turns into a miss. Once it is built,
calls go straight to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from shardcache.errors import ClosedError, ShardError, ShardUnavailableError
from shardcache.protocols import Dialect, Shard, Topology

__all__ = ["Deferred"]


class Deferred:
    """Stands for the topology that ``build`` makes, until ``build`` succeeds."""

    def __init__(
        self,
        build: Callable[[], Topology],
        first_error: ShardError,
        *,
        capabilities: frozenset[str],
        dialect: Dialect,
        retry_timeout: float,
        name: str,
    ) -> None:
        self._build = build
        self._error: ShardError = first_error
        self.capabilities = capabilities
        self.dialect = dialect
        self._retry_timeout = retry_timeout
        self._retry_at = time.monotonic() + retry_timeout
        self._lock = threading.Lock()
        self._real: Topology | None = None
        self._closed = False
        self.name = name

    def __repr__(self) -> str:
        state = "built" if self._real is not None else "unreachable at start-up"
        return f"<Deferred {self.name} {state}>"

    @property
    def built(self) -> Topology | None:
        """The topology if it was built already (never builds it)."""
        return self._real

    def real(self) -> Topology:
        """The topology, built now if its time has come; `ShardUnavailableError` if not."""
        found = self._real
        if found is not None:
            return found
        if self._closed:
            raise ClosedError(f"{self.name} is closed")
        with self._lock:
            if self._real is None and time.monotonic() >= self._retry_at:
                try:
                    self._real = self._build()
                except ShardError as exc:
                    self._error = exc
                    self._retry_at = time.monotonic() + self._retry_timeout
            if self._real is not None:
                return self._real
        raise ShardUnavailableError(
            f"{self.name} was unreachable when first used ({self._error}); "
            f"tried again every {self._retry_timeout:g}s",
            sent=False,
        )

    # --- the topology protocol, passed on -------------------------------------------------

    def shard_for(self, key: bytes, *, read: bool = False) -> Shard:
        return self.real().shard_for(key, read=read)

    def group(self, keys: Iterable[bytes], *, read: bool = False) -> dict[Shard, list[list[bytes]]]:
        return self.real().group(keys, read=read)

    def shards(self) -> Sequence[Shard]:
        return self.real().shards()

    def reports(self) -> list[Any]:
        return self.real().reports()  # type: ignore[attr-defined,no-any-return]

    @property
    def closed(self) -> bool:
        return self._closed or (self._real is not None and self._real.closed)

    def close(self) -> None:
        self._closed = True
        if self._real is not None:
            self._real.close()
