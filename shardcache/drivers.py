"""The two drivers of `Cache` operations, and the steps they run.

Each operation is written once, as a generator of steps: `Exec` (one command on a shard),
`Pipe` (a batch on a shard, one round trip), `Fan` (a batch on each of many shards at
once) or `Sleep` (a wait between retries). The driver runs each step and sends its result
back into the generator, or throws its `ShardError` in, until the generator returns the
operation's result. `run_sync` runs the
steps on the shards' sockets; `run_async` on their asyncio connections (`shardcache.aio`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from time import perf_counter
from typing import Any, TypeVar

from redis.exceptions import NoScriptError

from shardcache import aio
from shardcache.errors import CommandError, ShardError, ShardUnavailableError
from shardcache.metrics import Metrics
from shardcache.protocols import Dialect, PendingBatch, Shard

__all__ = [
    "Compute",
    "Exec",
    "Failed",
    "Fan",
    "Pipe",
    "Sleep",
    "Step",
    "Steps",
    "fan_out",
    "run_async",
    "run_sync",
    "scripted",
]

T = TypeVar("T")


class Exec:
    """Run ``command`` on ``shard``; ``key`` names it in errors; an ``idempotent`` command
    may be retried once on a fresh connection."""

    __slots__ = ("command", "idempotent", "key", "shard")

    def __init__(
        self, shard: Shard, command: Sequence[Any], key: bytes | None, idempotent: bool
    ) -> None:
        self.shard = shard
        self.command = command
        self.key = key
        self.idempotent = idempotent

    def run(self) -> Any:
        return self.shard.execute(*self.command, key=self.key, idempotent=self.idempotent)

    async def arun(self) -> Any:
        return await aio.execute(self.shard, self.command, self.key, self.idempotent)


class Pipe:
    """Run ``commands`` on ``shard`` in one round trip: their replies, error replies as
    `CommandError` values in their places."""

    __slots__ = ("commands", "shard")

    def __init__(self, shard: Shard, commands: Sequence[Sequence[Any]]) -> None:
        self.shard = shard
        self.commands = commands

    def run(self) -> list[Any]:
        return self.shard.pipeline(self.commands)

    async def arun(self) -> list[Any]:
        return await aio.pipeline(self.shard, self.commands)


class Fan:
    """Run each shard's batch, every shard at once: per shard, its replies or the
    `ShardUnavailableError` that stopped it (so the other shards still answer)."""

    __slots__ = ("commands",)

    def __init__(self, commands: Mapping[Shard, Sequence[Sequence[Any]]]) -> None:
        self.commands = commands

    def run(self) -> dict[Shard, list[Any] | ShardUnavailableError]:
        return fan_out(self.commands)

    async def arun(self) -> dict[Shard, list[Any] | ShardUnavailableError]:
        return await aio.fan_out(self.commands)


class Sleep:
    """Wait ``seconds`` (a blocking sleep, or an asyncio one that lets other tasks run)."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def run(self) -> None:
        time.sleep(self.seconds)

    async def arun(self) -> None:
        await asyncio.sleep(self.seconds)


class Compute:
    """Call the caller's function (awaited on asyncio when it returns an awaitable). Its
    exception comes back as a `Failed` result, so that the steps can clean up first."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def run(self) -> Any:
        try:
            return self.fn()
        except Exception as exc:
            return Failed(exc)

    async def arun(self) -> Any:
        try:
            result = self.fn()
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:
            return Failed(exc)


class Failed:
    """What a `Compute` step raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


Step = Exec | Pipe | Fan | Sleep | Compute
Steps = Generator[Step, Any, T]


def run_sync(steps: Steps[T], metrics: Metrics | None = None) -> T:
    """Run ``steps`` to their result on the calling thread, counting each shard's calls
    in ``metrics`` if given."""
    send, throw = steps.send, steps.throw
    try:
        step = next(steps)
        while True:
            began = perf_counter()
            try:
                result = step.run()
            except ShardError as exc:
                if metrics is not None:
                    _count(metrics, step, perf_counter() - began, exc)
                step = throw(exc)
            else:
                if metrics is not None:
                    _count(metrics, step, perf_counter() - began, result)
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(steps: Steps[T], metrics: Metrics | None = None) -> T:
    """Run ``steps`` to their result on the running event loop (``metrics``: as
    `run_sync`)."""
    send, throw = steps.send, steps.throw
    try:
        step = next(steps)
        while True:
            began = perf_counter()
            try:
                result = await step.arun()
            except ShardError as exc:
                if metrics is not None:
                    _count(metrics, step, perf_counter() - began, exc)
                step = throw(exc)
            else:
                if metrics is not None:
                    _count(metrics, step, perf_counter() - began, result)
                step = send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _count(metrics: Metrics, step: Step, seconds: float, outcome: Any) -> None:
    """One step's calls: a command or a batch on its shard, or a batch on each of many."""
    kind = step.__class__  # the step classes are final: cheaper than isinstance of a union
    if kind is Exec or kind is Pipe:
        error = outcome if isinstance(outcome, ShardError) else None
        metrics.observe(step.shard.id, seconds, error)  # type: ignore[union-attr]
    elif isinstance(step, Fan):
        if isinstance(outcome, ShardError):
            for shard in step.commands:
                metrics.observe(shard.id, seconds, outcome)
        else:
            for shard, found in outcome.items():
                error = found if isinstance(found, ShardError) else None
                metrics.observe(shard.id, seconds, error)


def scripted(shard: Shard, key: bytes, command: Sequence[Any], dialect: Dialect) -> Steps[Any]:
    """Run ``command`` on ``shard``; if it runs a script the server does not know yet, run
    it again with the script's text (`Dialect.unscripted`)."""
    try:
        return (yield Exec(shard, command, key, False))
    except CommandError as exc:
        whole = dialect.unscripted(tuple(command))
        if whole is None or not isinstance(exc.reply, NoScriptError):
            raise
    return (yield Exec(shard, whole, key, False))


def fan_out(
    commands: Mapping[Shard, Sequence[Sequence[Any]]],
) -> dict[Shard, list[Any] | ShardUnavailableError]:
    """Send each shard its commands, then read every reply; a shard that fails gives its
    error in place of its replies, so the others still answer."""
    pending: list[tuple[Shard, PendingBatch | ShardUnavailableError]] = []
    try:
        for shard, batch in commands.items():
            try:
                pending.append((shard, shard.begin(batch)))
            except ShardUnavailableError as exc:
                pending.append((shard, exc))
    except BaseException:
        # Read what was sent, so no connection goes back to a pool with replies pending.
        for _, started in pending:
            if not isinstance(started, ShardUnavailableError):
                with contextlib.suppress(ShardUnavailableError):
                    started.finish()
        raise
    results: dict[Shard, list[Any] | ShardUnavailableError] = {}
    for shard, started in pending:
        if isinstance(started, ShardUnavailableError):
            results[shard] = started
            continue
        try:
            results[shard] = started.finish()
        except ShardUnavailableError as exc:
            results[shard] = exc
    return results
