"""``python -m shardcache.testing up|status|down``: local servers that outlive the command.

``up`` starts the servers detached, prints their addresses and saves them (pids, ports,
directories) to a JSON state file; ``status`` and ``down`` read that file, so ``down`` stops
exactly what ``up`` started and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from shardcache.errors import LocalServerError
from shardcache.testing.local import LocalTopology, format_health

__all__ = ["default_state_path", "main"]


def default_state_path() -> Path:
    """``$SHARDCACHE_STATE``, else ``shardcache-testing-<uid>.json`` in the temp directory."""
    configured = os.environ.get("SHARDCACHE_STATE")
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"shardcache-testing-{os.getuid()}.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m shardcache.testing",
        description="Run real local Redis / Redis Cluster / Sentinel / memcached servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start servers in the background and save their state")
    up.add_argument("--standalone", type=int, metavar="N", help="N standalone redis-servers")
    up.add_argument("--cluster", action="store_true", help="a 3 masters + 3 replicas cluster")
    up.add_argument("--sentinel", action="store_true", help="bucket0/bucket1 with 3 sentinels")
    up.add_argument("--memcached", type=int, metavar="N", help="N memcached servers")
    up.add_argument("--json", action="store_true", help="print the saved state as JSON")
    status = commands.add_parser("status", help="print a health table of what 'up' started")
    status.add_argument("--json", action="store_true", help="print the saved state as JSON")
    commands.add_parser("down", help="stop what 'up' started and remove its files")
    for command in (up, status, commands.choices["down"]):
        command.add_argument("--state", type=Path, default=None, help="the state file")
    return parser


def _load(path: Path) -> LocalTopology | None:
    try:
        return LocalTopology.from_state(json.loads(path.read_text()))
    except FileNotFoundError:
        return None


def _up(args: argparse.Namespace, path: Path) -> int:
    existing = _load(path)
    if existing is not None:
        if any(proc.running for part in existing.parts.values() for proc in part):
            print(f"already up (state in {path}); run 'down' first", file=sys.stderr)
            return 1
        existing.stop()  # leftovers of a set that died: remove its directories
    chosen = args.cluster or args.sentinel or args.standalone or args.memcached
    local = LocalTopology(
        standalone=(args.standalone or 0) if chosen else 3,
        cluster=args.cluster or not chosen,
        sentinel=args.sentinel or not chosen,
        memcached=(args.memcached or 0) if chosen else 3,
        detach=True,
    )
    local.start()
    state = local.state()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2))
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    print(f"shardcache: servers up in {local.startup_seconds:.1f}s; state saved to {path}")
    for kind, part in state["parts"].items():
        for key in ("urls", "startup_nodes", "sentinels", "names", "servers"):
            if key in part:
                print(f"  {kind:<10} {key:<14} {' '.join(part[key])}")
    return 0


def _status(args: argparse.Namespace, path: Path) -> int:
    local = _load(path)
    if local is None:
        print(f"nothing is up (no state file {path})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(local.state(), indent=2))
    rows = local.health()
    print(format_health(rows))
    return 0 if all(row.ok for row in rows) else 1


def _down(path: Path) -> int:
    local = _load(path)
    if local is None:
        print(f"nothing is up (no state file {path})")
        return 0
    count = sum(1 for part in local.parts.values() for proc in part if proc.running)
    local.stop()
    path.unlink(missing_ok=True)
    print(f"shardcache: stopped {count} server processes")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = args.state or default_state_path()
    try:
        if args.command == "up":
            return _up(args, path)
        if args.command == "status":
            return _status(args, path)
        return _down(path)
    except LocalServerError as exc:
        print(f"shardcache: {exc}", file=sys.stderr)
        return 1
