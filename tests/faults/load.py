"""The load of the fault suite: threads of mixed get/set/get_many/incr whose values only
grow, so lost and stale values can be counted, and one report row per scenario."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from shardcache import MissingKeyError
from shardcache.testing import wait_until

HUNG = 10.0  # seconds: a call that takes longer than this is counted as hung
KEYS_PER_THREAD = 16


@dataclass
class Row:
    """What callers saw during one scenario."""

    scenario: str
    ops: int = 0
    errors: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    stale: int = 0
    lost: int = 0
    hung: int = 0
    longest_stall: float = 0.0
    recovery: float | None = None  # seconds from the fault to the last caller error
    p99_others_ms: float | None = None
    notes: str = ""

    def note(self, text: str) -> None:
        self.notes = f"{self.notes}; {text}" if self.notes else text

    def markdown(self) -> str:
        recovery = "-" if self.recovery is None else f"{self.recovery:.2f}s"
        p99 = "-" if self.p99_others_ms is None else f"{self.p99_others_ms:.1f}"
        return (
            f"| {self.scenario} | {self.ops} | {self.errors} | {recovery} | "
            f"{self.longest_stall:.2f}s | {self.lost} | {self.stale} | {self.misses} | "
            f"{self.hung} | {p99} | {self.notes} |"
        )


HEADER = (
    "| scenario | ops | caller errors | errors until | longest stall | lost acked writes "
    "| stale reads | misses | hung calls | p99 other shards (ms) | notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class Load:
    """``threads`` workers on ``cache`` (a `Cache`, or a Django/Flask backend with the same
    method names), each writing its own keys with values that only grow."""

    cache: Any
    threads: int = 4
    django: bool = False  # Django's set returns None and its incr takes no create flag
    # Writes the API cannot confirm (Django's set returns None, and with IGNORE_ERRORS a
    # failed one says nothing): a value counts as acknowledged once read back.
    blind_writes: bool = False
    shard_of: Callable[[str], str] | None = None  # for per-shard latency and errors
    acked: dict[str, int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    errors: list[float] = field(default_factory=list)
    durations: list[tuple[str, float]] = field(default_factory=list)
    # Caller errors by the shard of the call's key ("*" for get_many, which spans shards).
    failed_on: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    misses: int = 0
    stale: int = 0
    ops: int = 0
    longest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def _timed(self, key: str, call: Callable[[], Any], *, many: bool = False) -> Any:
        started = time.monotonic()
        try:
            return call()
        except Exception as exc:
            if self.shard_of is not None and not isinstance(exc, MissingKeyError):
                shard = "*" if many else self.shard_of(key)
                self.failed_on[shard] = self.failed_on.get(shard, 0) + 1
            raise
        finally:
            took = time.monotonic() - started
            self.longest = max(self.longest, took)
            self.ops += 1
            if self.shard_of is not None:
                self.durations.append((self.shard_of(key), took))

    def _work(self, thread: int) -> None:
        cache, n = self.cache, 0
        counter = f"c{thread}"
        while not self.stop.is_set():
            n += 1
            key = f"t{thread}:{n % KEYS_PER_THREAD}"
            try:
                stored = self._timed(key, functools.partial(cache.set, key, n))
                if stored is not False and not self.blind_writes:
                    self.acked[key] = n
                got = self._timed(key, functools.partial(cache.get, key))
                if self.blind_writes and got == n:
                    self.acked[key] = n
                if got is None:
                    self.misses += 1
                elif got < self.acked.get(key, 0):
                    self.stale += 1
                if n % 8 == 0:
                    keys = [f"t{thread}:{j}" for j in range(KEYS_PER_THREAD)]
                    found = self._timed(key, functools.partial(cache.get_many, keys), many=True)
                    self.stale += sum(
                        1 for k, v in found.items() if v is not None and v < self.acked.get(k, 0)
                    )
                if n % 4 == 0:
                    if self.django:
                        self._timed(counter, lambda: cache.get_or_set(counter, 0))
                        self._timed(counter, lambda: cache.incr(counter))
                    else:
                        self._timed(counter, lambda: cache.incr(counter, create=True))
                    self.counted[counter] = self.counted.get(counter, 0) + 1
            except MissingKeyError:
                # An incr under ignore_errors while its shard is down: the documented miss
                # (there is no counter to add to), not an error.
                self.misses += 1
            except Exception as exc:
                self.errors.append(time.monotonic())
                self.kinds[type(exc).__name__] = self.kinds.get(type(exc).__name__, 0) + 1
                time.sleep(0.005)

    @contextmanager
    def running(self, *, acked: bool = True) -> Iterator[Load]:
        """The load running for the block; first, unless ``acked`` is False, until each
        thread has had a write acknowledged."""
        workers = [threading.Thread(target=self._work, args=(i,)) for i in range(self.threads)]
        for worker in workers:
            worker.start()
        try:
            if acked:
                wait_until(lambda: len(self.acked) >= self.threads, timeout=30, what="the load")
            yield self
        finally:
            self.stop.set()
            for worker in workers:
                worker.join(HUNG + 30)
            self.hung_workers = sum(1 for worker in workers if worker.is_alive())

    def settle(self, seconds: float = 1.0) -> None:
        """Let the load run ``seconds`` more (after a recovery)."""
        done = self.ops
        wait_until(lambda: self.ops > done, timeout=30, what="the load to go on")
        time.sleep(seconds)

    def row(self, scenario: str, fault_at: float, *, count_lost: bool = True) -> Row:
        lost = 0
        if count_lost:
            found = self.cache.get_many(list(self.acked))
            lost = sum(1 for k, v in self.acked.items() if (found.get(k) or 0) < v)
            for counter, count in self.counted.items():
                value = self.cache.get(counter) or 0
                lost += max(0, count - value)
        after = [t for t in self.errors if t >= fault_at]
        return Row(
            scenario,
            ops=self.ops,
            errors=len(self.errors),
            misses=self.misses,
            stale=self.stale,
            lost=lost,
            hung=self.hung_workers + (1 if self.longest > HUNG else 0),
            longest_stall=self.longest,
            recovery=(max(after) - fault_at) if after else None,
            notes=", ".join(f"{count} {kind}" for kind, count in sorted(self.kinds.items())),
        )
