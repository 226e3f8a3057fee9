"""Interleaved throughput comparison shared by the benchmarks."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

Case = tuple[Callable[[], Any], Callable[[], Any]]


def slice_options(
    name: str, doc: str | None, argv: list[str] | None, *, seconds: float = 0.5, rounds: int = 6
) -> argparse.Namespace:
    """``--seconds`` (length of one timed slice) and ``--rounds`` (slices per side)."""
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=doc)
    parser.add_argument("--seconds", type=float, default=seconds, help="length of one slice")
    parser.add_argument("--rounds", type=int, default=rounds, help="slices per side")
    return parser.parse_args(argv)


def _timed(fn: Callable[[], Any], seconds: float) -> tuple[int, float, float]:
    """Call ``fn`` for about ``seconds``; return (calls, elapsed, this thread's CPU)."""
    calls = 0
    cpu0, began = time.thread_time(), time.perf_counter()
    deadline = began + seconds
    while True:
        for _ in range(20):
            fn()
        calls += 20
        now = time.perf_counter()
        if now >= deadline:
            return calls, now - began, time.thread_time() - cpu0


def throughput(fn: Callable[[], Any], seconds: float) -> tuple[int, float]:
    """Call ``fn`` for about ``seconds``; return (calls, elapsed)."""
    calls, elapsed, _ = _timed(fn, seconds)
    return calls, elapsed


def compare(
    cases: Mapping[str, Case],
    *,
    theirs: str,
    targets: Mapping[str, float],
    floors: Mapping[str, Callable[[], Any]] | None = None,
    seconds: float = 0.5,
    rounds: int = 6,
) -> dict[str, float]:
    """Run each case's two sides (and its floor, if any) in alternating slices, print the
    median rates and ratios, and return the ratios ours / theirs."""
    floors = floors or {}
    header = f"{'operation':<15}{'shardcache/s':>13}{theirs + '/s':>22}{'ratio':>8}{'target':>8}"
    print(header + (f"{'':>6}{'floor/s':>10}{'ours/floor':>12}" if floors else ""))
    ratios = {}
    for name, (ours, other) in cases.items():
        sides = {"ours": ours, "theirs": other}
        if name in floors:
            sides["floor"] = floors[name]
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for round_ in range(rounds):
            order = list(sides.items())
            for side, fn in order if round_ % 2 == 0 else reversed(order):
                calls, elapsed = throughput(fn, seconds)
                rates[side].append(calls / elapsed)
        rate = {side: statistics.median(samples) for side, samples in rates.items()}
        ratio = ratios[name] = rate["ours"] / rate["theirs"]
        target = targets.get(name)
        verdict = (
            f"{target:>7.2f}x {'ok' if ratio >= target else 'MISS':<5}" if target else " " * 14
        )
        line = f"{name:<15}{rate['ours']:>13,.0f}{rate['theirs']:>22,.0f}{ratio:>7.2f}x{verdict}"
        if "floor" in rate:
            line += f"{rate['floor']:>10,.0f}{rate['ours'] / rate['floor']:>11.2f}x"
        print(line)
    return ratios


def cost_per_call(fn: Callable[[], Any], seconds: float) -> tuple[float, float]:
    """Call ``fn`` for about ``seconds``; return (wall µs, client CPU µs) per call. CPU is
    this thread's (``time.thread_time``): what the client spends, the servers' work aside."""
    calls, elapsed, cpu = _timed(fn, seconds)
    return elapsed / calls * 1e6, cpu / calls * 1e6
