"""``python -m bench NAME``, NAME one of cache (the default), cluster, sentinel, memcache,
django, async, flask, records, startup, metrics, near; ``--help`` for options."""

from __future__ import annotations

import sys

from bench import (
    async_caches,
    cache,
    cluster,
    django_caches,
    flask_caches,
    memcache,
    metrics,
    near,
    records,
    sentinel,
    startup,
)

BENCHMARKS = {
    "cache": cache.main,
    "cluster": cluster.main,
    "sentinel": sentinel.main,
    "memcache": memcache.main,
    "django": django_caches.main,
    "async": async_caches.main,
    "flask": flask_caches.main,
    "records": records.main,
    "startup": startup.main,
    "metrics": metrics.main,
    "near": near.main,
}


def run(argv: list[str]) -> None:
    name = argv[0] if argv and not argv[0].startswith("-") else "cache"
    if name not in BENCHMARKS:
        raise SystemExit(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    BENCHMARKS[name](argv[1:] if argv and argv[0] == name else argv)


if __name__ == "__main__":
    run(sys.argv[1:])
