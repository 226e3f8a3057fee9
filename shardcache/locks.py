"""`Cache.lock`: a lock named by a cache key, on the shard that holds the key.

Taken with SET NX PX and a random token; released, extended and checked by scripts that act
only while the key still holds that token, so a holder whose lock expired can never release
or extend another holder's. Each call is written once as steps (`shardcache.drivers`), so the
sync and async APIs are one implementation, waits included (`Sleep`). Redis topologies only
(the "locks" capability). A lock never follows ``ignore_errors``: an unreachable shard
raises, because a lock that only seemed taken protects nothing.
"""

from __future__ import annotations

import os
import time
from types import TracebackType
from typing import TYPE_CHECKING

from shardcache.dialects import REDIS
from shardcache.drivers import Exec, Sleep, Steps, run_async, run_sync, scripted
from shardcache.errors import ConfigurationError, LockError, LockNotOwnedError

if TYPE_CHECKING:
    from shardcache.protocols import Shard

__all__ = ["Lock"]


class Lock:
    """A lock on ``key`` of ``shard`` (see `Cache.lock`). ``timeout``: seconds the lock lives
    unless extended (None: until released); ``blocking_timeout``: how long `acquire` waits
    (None: forever); ``sleep``: seconds between attempts."""

    def __init__(
        self,
        shard: Shard,
        key: bytes,
        *,
        timeout: float | None = None,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        sleep: float = 0.1,
    ) -> None:
        if timeout is not None and timeout <= 0:
            raise ConfigurationError(f"lock timeout must be positive seconds, not {timeout!r}")
        self.shard = shard
        self.name = key
        self.timeout = timeout
        self.blocking = blocking
        self.blocking_timeout = blocking_timeout
        self.sleep = sleep
        self.token: bytes | None = None

    def __repr__(self) -> str:
        return f"<Lock {self.name!r} on {self.shard.id}{' held' if self.token else ''}>"

    @staticmethod
    def _ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    # --- acquire ---------------------------------------------------------------------------

    def acquire(
        self,
        blocking: bool | None = None,
        blocking_timeout: float | None = None,
        token: bytes | str | None = None,
    ) -> bool:
        """Take the lock; True if taken. Waits up to ``blocking_timeout`` seconds (the
        lock's own by default) unless ``blocking`` is False."""
        return run_sync(self._acquire(blocking, blocking_timeout, token))

    async def aacquire(
        self,
        blocking: bool | None = None,
        blocking_timeout: float | None = None,
        token: bytes | str | None = None,
    ) -> bool:
        return await run_async(self._acquire(blocking, blocking_timeout, token))

    def _acquire(
        self, blocking: bool | None, blocking_timeout: float | None, token: bytes | str | None
    ) -> Steps[bool]:
        if token is None:
            token = os.urandom(16).hex().encode()
        elif isinstance(token, str):
            token = token.encode()
        blocking = self.blocking if blocking is None else blocking
        wait = self.blocking_timeout if blocking_timeout is None else blocking_timeout
        deadline = None if wait is None else time.monotonic() + wait
        px = None if self.timeout is None else self._ms(self.timeout)
        command = REDIS.set(self.name, token, px, True)
        while True:
            if (yield Exec(self.shard, command, self.name, False)) is not None:
                self.token = token
                return True
            if not blocking:
                return False
            pause = self.sleep
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                pause = min(pause, left)
            yield Sleep(pause)

    # --- release, extend -------------------------------------------------------------------

    def release(self) -> None:
        """Give the lock up. `LockError` if this holder does not hold it,
        `LockNotOwnedError` if it expired or was taken meanwhile."""
        run_sync(self._release())

    async def arelease(self) -> None:
        await run_async(self._release())

    def _release(self) -> Steps[None]:
        token = self.token
        if token is None:
            raise LockError(f"cannot release {self.name!r}: this holder does not hold it")
        self.token = None
        if not (yield from scripted(self.shard, self.name, REDIS.unlock(self.name, token), REDIS)):
            raise LockNotOwnedError(f"lock {self.name!r} was no longer ours to release")

    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        """Add ``additional_time`` seconds to the lock's life (``replace_ttl``: make it
        exactly that from now). `LockNotOwnedError` if it is no longer held."""
        return run_sync(self._extend(additional_time, replace_ttl))

    async def aextend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        return await run_async(self._extend(additional_time, replace_ttl))

    def reacquire(self) -> bool:
        """Reset the lock's life to its ``timeout`` from now."""
        return run_sync(self._reacquire())

    async def areacquire(self) -> bool:
        return await run_async(self._reacquire())

    def _reacquire(self) -> Steps[bool]:
        if self.timeout is None:
            raise LockError("a lock without timeout cannot be reacquired")
        return (yield from self._extend(self.timeout, True))

    def _extend(self, seconds: float, replace: bool) -> Steps[bool]:
        token = self.token
        if token is None:
            raise LockError(f"cannot extend {self.name!r}: this holder does not hold it")
        if self.timeout is None:
            raise LockError("a lock without timeout cannot be extended")
        command = REDIS.extend_lock(self.name, token, self._ms(seconds), replace)
        if not (yield from scripted(self.shard, self.name, command, REDIS)):
            raise LockNotOwnedError(f"lock {self.name!r} is no longer ours to extend")
        return True

    # --- state -----------------------------------------------------------------------------

    def locked(self) -> bool:
        """Whether anyone holds the lock now."""
        return run_sync(self._locked())

    async def alocked(self) -> bool:
        return await run_async(self._locked())

    def _locked(self) -> Steps[bool]:
        return bool((yield Exec(self.shard, REDIS.exists(self.name), self.name, True)))

    def owned(self) -> bool:
        """Whether this holder holds the lock now."""
        return run_sync(self._owned())

    async def aowned(self) -> bool:
        return await run_async(self._owned())

    def _owned(self) -> Steps[bool]:
        if self.token is None:
            return False
        held = yield Exec(self.shard, REDIS.get(self.name), self.name, True)
        return bool(held == self.token)

    # --- with / async with -----------------------------------------------------------------

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockError(f"could not acquire lock {self.name!r}")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Lock:
        if not await self.aacquire():
            raise LockError(f"could not acquire lock {self.name!r}")
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.arelease()
