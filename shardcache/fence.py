"""Keep a server out of use until the requests of its timed-out connections are settled.

A request that timed out is still in the server's socket buffer when the client gives up on
it: a paused server (SIGSTOP, a long fork, a stalled VM) runs it when it wakes. If the client
meanwhile wrote the same key again on another connection, the server may run the two in
either order (memcached serves connections from several threads, and Redis takes ready
connections in the order its event loop sees them), and the older, unacknowledged value can
overwrite the newer, acknowledged one: a lost write. Seen in the fault suite, three times in
17,000 operations, with a memcached shard paused for 3 s.

So a connection that timed out is not closed: it is half-closed (its FIN queued behind the
request) and kept. The server reads the request, runs it, then reads the FIN and closes its
end; only when every such connection has been closed by the server (or reset: the process
that held the requests is gone) does the server take new calls. A server that never answers
is let back after `LIMIT` seconds, with a warning. Neither redis-py nor pymemcache keeps
anything like this: they close the socket and forget it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

__all__ = ["LIMIT", "Fence"]

logger = logging.getLogger(__name__)

# How long a server that neither answers nor resets a timed-out connection is kept out of
# use: long enough for a paused process or a failover, short enough that a host that died
# without a reset (power loss) is retried within half a minute.
LIMIT = 30.0


class Fence:
    """The timed-out connections of one server (``name`` in logs) that it has not closed."""

    __slots__ = ("_lock", "_sockets", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._sockets: list[tuple[socket.socket, float]] = []
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._sockets)

    def add(self, sock: socket.socket) -> None:
        """Keep ``sock`` (now owned by the fence) until the server closes it."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # already reset: nothing more of it can reach the server
            sock.close()
            return
        with self._lock:
            self._sockets.append((sock, time.monotonic() + LIMIT))

    def settled(self) -> bool:
        """Whether every kept connection is closed by now (non-blocking: a few µs each)."""
        if not self._sockets:
            return True
        with self._lock:
            now, left = time.monotonic(), []
            for sock, deadline in self._sockets:
                if _closed_by_peer(sock):
                    sock.close()
                elif now >= deadline:
                    logger.warning(
                        "shardcache: %s has not answered a timed-out call in %gs; it is "
                        "used again without knowing whether that call ran",
                        self.name,
                        LIMIT,
                    )
                    sock.close()
                else:
                    left.append((sock, deadline))
            self._sockets = left
        return not left

    def clear(self) -> None:
        """Close every kept socket: the client is closing."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock, _ in sockets:
            sock.close()

    def after_fork(self) -> None:
        """In a forked child: close its copies (the parent's connections stay open) and
        forget them; the lock is new, as another thread may have held it at the fork."""
        self._lock = threading.Lock()
        self.clear()


def _closed_by_peer(sock: socket.socket) -> bool:
    while True:
        try:
            if not sock.recv(65536):
                return True  # end of stream: the server has run all it read
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # reset, or closed here: nothing of it runs any more
