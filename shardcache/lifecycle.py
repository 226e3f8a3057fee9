"""What a topology owns besides sockets: its threads, and what happens to both across ``fork()``.

- `forget_after_fork` lists objects whose ``_after_fork()`` runs in a child process right
  after ``os.fork()`` (gunicorn ``--preload``, multiprocessing): they drop the parent's
  sockets unused, make new locks (a lock held by another parent thread would never be
  released in the child) and mark their threads as not started, so they start again lazily.
- `until_loop_ends` runs a callback when an asyncio event loop shuts down (``asyncio.run``,
  ``asyncio.Runner``, asgiref's ``async_to_sync`` all call ``loop.shutdown_asyncgens()``
  before closing the loop), so the connections opened on that loop are closed in time,
  from the loop's own thread, and nothing keeps the loop alive afterwards.
- `Workers` is a small pool of daemon threads for the shards that have no asyncio or
  scatter/gather client (memcache): named, started on demand, stopped by ``close``, rebuilt
  in a forked child. ``concurrent.futures.ThreadPoolExecutor`` would do the work, but its
  threads are not daemons (the interpreter waits for them at exit) and an executor carried
  across ``fork()`` hands work to threads that do not exist in the child.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from shardcache.errors import ClosedError

__all__ = ["Workers", "end_watch", "forget_after_fork", "until_loop_ends"]

T = TypeVar("T")

_IDLE_LIFETIME = 60.0  # seconds a worker thread waits for work before it ends


class _Forkable(Protocol):
    def _after_fork(self) -> None: ...


_forkable: weakref.WeakSet[Any] = weakref.WeakSet()


def forget_after_fork(owner: _Forkable) -> None:
    """Call ``owner._after_fork()`` in every child forked from now on (held weakly)."""
    _forkable.add(owner)


def _in_child() -> None:
    for owner in list(_forkable):
        owner._after_fork()


os.register_at_fork(after_in_child=_in_child)


async def _watch(callback: Callable[[], None]) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        callback()


def until_loop_ends(callback: Callable[[], None]) -> AsyncGenerator[None, None]:
    """Call ``callback`` when the running event loop shuts its asynchronous generators
    down, or when `end_watch` is given the returned watch. Keep the watch referenced: the
    loop holds it weakly.

    The watch is an asynchronous generator started here, in the loop's thread, so that the
    loop's ``firstiter`` hook registers it; ``shutdown_asyncgens`` then closes it, which
    runs ``callback``. It is started by hand: its first step never suspends.
    """
    watch = _watch(callback)
    with contextlib.suppress(StopIteration):
        watch.asend(None).send(None)
    return watch


def end_watch(watch: AsyncGenerator[None, None]) -> None:
    """Run a watch's callback now (once: a finished watch does nothing)."""
    with contextlib.suppress(StopIteration, RuntimeError):
        watch.aclose().send(None)


class Workers:
    """At most ``size`` daemon threads named ``{name}-{n}``, started when work finds none
    idle and ended after a minute without any. Each ``submit`` returns a
    `concurrent.futures.Future`."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.closed = False
        self._start()
        forget_after_fork(self)

    def _start(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self._threads: list[threading.Thread] = []
        self._numbers = itertools.count()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()

    def _after_fork(self) -> None:
        # The parent's threads do not exist here, nor may its queue be trusted.
        self._start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self.closed:
            raise ClosedError(f"{self.name}: closed")
        future: Future[T] = Future()
        self._jobs.put((future, fn, args))
        if not self._idle.acquire(blocking=False):
            self._grow()
        return future

    def _grow(self) -> None:
        with self._lock:
            if len(self._threads) < self.size and not self.closed:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}-{next(self._numbers)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        jobs, idle = self._jobs, self._idle
        while True:
            try:
                job = jobs.get(timeout=_IDLE_LIFETIME)
            except queue.Empty:
                if idle.acquire(blocking=False):  # still counted as idle: nobody needs it
                    with self._lock:
                        self._threads.remove(threading.current_thread())
                    return
                continue  # a job was promised to an idle thread: stay for it
            future, fn, args = job
            if fn is _stop:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)
            del job, future, fn, args
            idle.release()

    @property
    def threads(self) -> list[threading.Thread]:
        return [thread for thread in self._threads if thread.is_alive()]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every thread after the jobs already queued (waiting ``timeout`` at most);
        later ``submit`` calls raise `ClosedError`."""
        with self._lock:
            self.closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put((Future(), _stop, ()))
        deadline = time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        while True:
            try:
                future, fn, _ = self._jobs.get_nowait()
            except queue.Empty:
                return
            if fn is not _stop and future.set_running_or_notify_cancel():
                future.set_exception(ClosedError(f"{self.name}: closed"))


def _stop() -> None:
    """The job that tells a worker thread to end."""
