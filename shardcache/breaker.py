"""A circuit breaker per Redis server: fail fast while a server is known to be down.

A server whose call failed at the socket level (refused, reset, timed out) is marked down
for ``retry_timeout`` seconds. Meanwhile every call to it fails at once with
`ShardUnavailableError` (``sent=False``: nothing was written), instead of each caller
waiting for its own connect or read timeout; ``ignore_errors`` turns that into a miss. When
the time is up, one caller is let through as a probe: its success closes the breaker, its
failure opens it for another period. Other servers are never affected. Memcache has the
same rule in its shard manager (DESIGN.md section 3).

A call that timed out leaves its connection to a `Fence`: the server is not probed again
before it has closed that connection, so a request it runs late cannot overwrite a newer
write (see `shardcache.fence`).

The hot path pays one attribute read while the breaker is closed.
"""

from __future__ import annotations

import logging
import socket
import time

from shardcache.errors import ShardUnavailableError
from shardcache.fence import Fence

__all__ = ["Breaker"]

logger = logging.getLogger("shardcache.breaker")


class Breaker:
    """The down/up state of one server (``name`` in errors and logs)."""

    __slots__ = ("_probing", "down_until", "fence", "name", "retry_timeout", "trips")

    def __init__(self, name: str, retry_timeout: float) -> None:
        self.name = name
        self.retry_timeout = retry_timeout
        self.down_until = 0.0  # 0.0: closed (calls go through)
        self._probing = False
        self.trips = 0
        self.fence = Fence(name)

    @property
    def is_open(self) -> bool:
        """Whether calls to the server fail fast now."""
        return bool(self.down_until) and time.monotonic() < self.down_until

    def check(self) -> None:
        """Called before a call when ``down_until`` is set: raise while the server is down,
        or let this caller through as the one probe. The probe holds the breaker open for
        one more period, so a probe that never reports (cancelled, or failed some other
        way than the socket) only delays the next one, never wedges the server."""
        if not self.down_until:
            return
        now = time.monotonic()
        if now >= self.down_until and self.fence.settled():
            # Under the GIL one caller wins; a lost race probes twice.
            self.down_until = now + self.retry_timeout
            self._probing = True
            return
        if now >= self.down_until:
            raise ShardUnavailableError(
                "marked down until it closes the connections of its timed-out calls",
                shard=self.name,
                sent=False,
            )
        raise ShardUnavailableError(
            f"marked down after a failure, for {self.retry_timeout:g}s (circuit breaker)",
            shard=self.name,
            sent=False,
        )

    def failed(self, abandoned: socket.socket | None = None) -> None:
        """A call failed at the socket level: open the breaker (again). ``abandoned``: the
        socket of a call that timed out, kept until the server closes it."""
        if abandoned is not None:
            self.fence.add(abandoned)
        if self.retry_timeout <= 0:
            if self.fence:
                self.down_until = time.monotonic()  # no waiting, but the fence holds
            return
        if not self.down_until or self._probing:
            self.trips += 1
            if not self.down_until:  # one line per outage: a failed probe says nothing new
                logger.warning(
                    "shardcache: %s marked down after a connection failure; one call probes "
                    "it every %gs until it answers",
                    self.name,
                    self.retry_timeout,
                )
        self.down_until = time.monotonic() + self.retry_timeout
        self._probing = False

    def succeeded(self) -> None:
        """A call went through: close the breaker (not while a timed-out connection is
        still open: a call that was already on its way says nothing about that one)."""
        if self.fence and not self.fence.settled():
            return
        if self.down_until:
            logger.warning("shardcache: %s is back", self.name)
        self.down_until = 0.0
        self._probing = False
