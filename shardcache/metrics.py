"""Client-side counters per shard: operations, errors, timeouts, and a latency histogram.

One `Metrics` per topology, so one set per process when the topology is the shared one
(`shardcache.registry`). Each thread counts into its own table: the hot path takes no lock
and loses no increment to another thread; reading sums the tables. `prometheus_text`
renders them in Prometheus's text format, and `register_prometheus` exports them through
``prometheus_client`` when it is installed; labels are the shard ids, so their number is
bounded by the number of shards.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from shardcache.wire import timed_out

__all__ = ["BOUNDS", "Metrics", "ShardMetrics", "prometheus_text", "register_prometheus"]

# Histogram bucket upper bounds, in seconds (Prometheus's ``le``), then +Inf.
BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_OPS, _ERRORS, _TIMEOUTS, _SUM, _FIRST_BUCKET = 0, 1, 2, 3, 4  # a row's columns
_WIDTH = _FIRST_BUCKET + len(BOUNDS) + 1


@dataclass(frozen=True)
class ShardMetrics:
    """What one process saw of one shard: ``buckets`` are cumulative counts by upper bound
    (seconds, the last +Inf), as Prometheus's histogram."""

    shard: str
    operations: int
    errors: int
    timeouts: int
    latency_sum: float
    buckets: tuple[tuple[float, int], ...]


class Metrics:
    """The counters of one topology's shards (see the module's docstring)."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._tables: list[dict[str, list[Any]]] = []
        self._lock = threading.Lock()

    def _table(self) -> dict[str, list[Any]]:
        table: dict[str, list[Any]] | None = getattr(self._local, "table", None)
        if table is None:
            table = self._local.table = {}
            with self._lock:  # once per thread
                self._tables.append(table)
        return table

    def observe(self, shard: str, seconds: float, error: BaseException | None) -> None:
        """One call on ``shard`` that took ``seconds`` and failed with ``error`` (or not)."""
        try:
            row = self._local.table[shard]
        except (AttributeError, KeyError):
            row = self._table().setdefault(shard, [0] * 3 + [0.0] + [0] * (_WIDTH - 4))
        # Literal indices (_OPS, _SUM, _FIRST_BUCKET): this runs on every call.
        row[0] += 1
        row[3] += seconds
        row[4 + bisect_left(BOUNDS, seconds)] += 1
        if error is not None:
            row[_ERRORS] += 1
            cause = error.__cause__ or error
            if timed_out(cause):
                row[_TIMEOUTS] += 1

    def snapshot(self) -> dict[str, ShardMetrics]:
        """Every shard's counters so far, summed over the threads."""
        with self._lock:
            tables = list(self._tables)
        totals: dict[str, list[Any]] = {}
        for table in tables:
            for shard, row in list(table.items()):
                total = totals.setdefault(shard, [0] * 3 + [0.0] + [0] * (_WIDTH - 4))
                for i, value in enumerate(row):
                    total[i] += value
        found = {}
        for shard, total in sorted(totals.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*BOUNDS, float("inf")), total[_FIRST_BUCKET:], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            found[shard] = ShardMetrics(
                shard, total[_OPS], total[_ERRORS], total[_TIMEOUTS], total[_SUM], tuple(buckets)
            )
        return found


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def prometheus_lines(
    snapshot: Mapping[str, ShardMetrics], labels: Mapping[str, str] | None = None
) -> Iterator[str]:
    """The samples (no HELP/TYPE lines) of ``snapshot``, with ``labels`` on each."""
    extra = "".join(f',{k}="{_label(v)}"' for k, v in (labels or {}).items())
    for m in snapshot.values():
        base = f'shard="{_label(m.shard)}"{extra}'
        yield f"shardcache_operations_total{{{base}}} {m.operations}"
        yield f"shardcache_errors_total{{{base}}} {m.errors}"
        yield f"shardcache_timeouts_total{{{base}}} {m.timeouts}"
        for bound, count in m.buckets:
            yield f'shardcache_latency_seconds_bucket{{{base},le="{_le(bound)}"}} {count}'
        yield f"shardcache_latency_seconds_sum{{{base}}} {m.latency_sum!r}"
        yield f"shardcache_latency_seconds_count{{{base}}} {m.operations}"


_HEADERS = {
    "shardcache_operations_total": ("counter", "Calls to the shard (client side)."),
    "shardcache_errors_total": ("counter", "Calls to the shard that failed."),
    "shardcache_timeouts_total": ("counter", "Calls to the shard that timed out."),
    "shardcache_latency_seconds": ("histogram", "Latency of calls to the shard."),
}


# A near cache's figures (`shardcache.near.NearStats` fields): counters, then gauges.
_NEAR = {
    "hits": ("counter", "Reads served by the near cache."),
    "misses": ("counter", "Reads the near cache could not serve."),
    "stored": ("counter", "Replies kept by the near cache."),
    "refused": ("counter", "Replies not kept: invalidated while in flight."),
    "invalidations": ("counter", "Keys the servers said changed."),
    "evictions": ("counter", "Entries evicted by the near cache's bounds."),
    "flushes": ("counter", "Times the near cache dropped a server's or a slot's entries."),
    "entries": ("gauge", "Entries in the near cache."),
    "bytes": ("gauge", "Bytes the near cache counts for its entries."),
}


def _near_name(field: str) -> str:
    kind = _NEAR[field][0]
    return f"shardcache_near_{field}_total" if kind == "counter" else f"shardcache_near_{field}"


def prometheus_text(
    snapshot: Mapping[str, ShardMetrics],
    labels: Mapping[str, str] | None = None,
    near: Any = None,
) -> str:
    """``snapshot`` in Prometheus's text exposition format; with ``near`` (a cache's
    `NearCache`), its figures too."""
    by_family: dict[str, list[str]] = {name: [] for name in _HEADERS}
    for line in prometheus_lines(snapshot, labels):
        by_family[_family(line.split("{", 1)[0])].append(line)
    out = []
    for name, (kind, text) in _HEADERS.items():
        out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", *by_family[name]]
    if near is not None:
        stats = near.stats()
        label = ",".join(f'{k}="{_label(v)}"' for k, v in (labels or {}).items())
        for field, (kind, text) in _NEAR.items():
            name = _near_name(field)
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            out.append(
                f"{name}{{{label}}} {getattr(stats, field)}"
                if label
                else f"{name} {getattr(stats, field)}"
            )
    return "\n".join(out) + "\n"


def _family(sample: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if sample.endswith(suffix) and sample[: -len(suffix)] in _HEADERS:
            return sample[: -len(suffix)]
    return sample


def register_prometheus(
    metrics: Metrics, registry: Any = None, *, near: Any = None, **labels: str
) -> Any:
    """Export ``metrics`` through ``prometheus_client`` (its default registry unless
    ``registry``), and ``near`` (a cache's `NearCache`) when given; the collector it
    registered."""
    from prometheus_client import REGISTRY
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    names = ["shard", *labels]
    values = list(labels.values())

    class Collector:
        def collect(self) -> Iterator[Any]:
            snapshot = metrics.snapshot()
            families = {
                "operations": CounterMetricFamily(
                    "shardcache_operations",
                    _HEADERS["shardcache_operations_total"][1],
                    labels=names,
                ),
                "errors": CounterMetricFamily(
                    "shardcache_errors", _HEADERS["shardcache_errors_total"][1], labels=names
                ),
                "timeouts": CounterMetricFamily(
                    "shardcache_timeouts", _HEADERS["shardcache_timeouts_total"][1], labels=names
                ),
            }
            latency = HistogramMetricFamily(
                "shardcache_latency_seconds",
                _HEADERS["shardcache_latency_seconds"][1],
                labels=names,
            )
            for m in snapshot.values():
                families["operations"].add_metric([m.shard, *values], m.operations)
                families["errors"].add_metric([m.shard, *values], m.errors)
                families["timeouts"].add_metric([m.shard, *values], m.timeouts)
                buckets = [(_le(bound), count) for bound, count in m.buckets]
                latency.add_metric([m.shard, *values], buckets, m.latency_sum)
            yield from families.values()
            yield latency
            if near is not None:
                stats = near.stats()
                for field, (kind, text) in _NEAR.items():
                    maker = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = maker(f"shardcache_near_{field}", text, labels=list(labels))
                    family.add_metric(values, getattr(stats, field))
                    yield family

    collector = Collector()
    (registry or REGISTRY).register(collector)
    return collector
