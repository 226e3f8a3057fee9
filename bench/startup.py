"""How fast do the local topologies come up and go away? (target: the full set under 15 s)

    python -m bench startup [--runs N]

Starts the full local set (3 standalone redis, a 6-node cluster, 4 redis + 3 sentinels,
3 memcached) ``--runs`` times and prints start and stop times per part. It also forms the
same cluster with ``redis-cli --cluster create`` (the usual way) to show what forming it
ourselves with ADDSLOTS / MEET / REPLICATE saves.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from shardcache.testing import LocalTopology, RedisCluster, find_binary

BUDGET_SECONDS = 15.0


class RedisCliCluster(RedisCluster):
    """The same six nodes, formed by ``redis-cli --cluster create`` instead of by us."""

    def _form(self, timeout: float) -> None:
        addresses = [node.address for node in self.nodes]
        subprocess.run(
            [
                find_binary("redis-cli"),
                *("--cluster", "create", *addresses),
                *("--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )


def summary(label: str, samples: list[float]) -> str:
    return (
        f"{label:<28} median {statistics.median(samples):6.2f}s"
        f"   min {min(samples):6.2f}s   max {max(samples):6.2f}s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    starts: dict[str, list[float]] = {}
    stops: list[float] = []
    for _ in range(args.runs):
        local = LocalTopology()
        local.start()
        starts.setdefault("full set (19 servers)", []).append(local.startup_seconds or 0.0)
        for kind, part in local.parts.items():
            starts.setdefault(f"  {kind}", []).append(part.startup_seconds or 0.0)
        began = time.monotonic()
        local.stop()
        stops.append(time.monotonic() - began)

    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(args.runs):
        for cls, samples in ((RedisCluster, ours), (RedisCliCluster, theirs)):
            cluster = cls()
            cluster.start()
            samples.append(cluster.startup_seconds or 0.0)
            cluster.stop()

    print(f"startup over {args.runs} runs (budget {BUDGET_SECONDS:g}s for the full set):")
    for label, samples in starts.items():
        print(summary(label, samples))
    print(summary("stop full set", stops))
    print("cluster of 6, formed by:")
    print(summary("  shardcache (ADDSLOTS/MEET)", ours))
    print(summary("  redis-cli --cluster create", theirs))
    worst = max(starts["full set (19 servers)"])
    verdict = "within" if worst < BUDGET_SECONDS else "OVER"
    print(f"verdict: the worst full-set start, {worst:.2f}s, is {verdict} budget")


if __name__ == "__main__":
    main()
