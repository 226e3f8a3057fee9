"""``python manage.py shardcache_cache``: see and steer the shardcache caches of ``CACHES``.

    shardcache_cache info [ALIAS]              every server of each shardcache cache
    shardcache_cache where KEY [--alias A] [--version V]
    shardcache_cache states [--alias A]        memcache shard states
    shardcache_cache states set ADDRESS STATE [--source S] [--alias A]
                                               for every process (OPTIONS["SHARD_STATES_FILE"])
    shardcache_cache clear ALIAS [--yes]       this cache's keys (its KEY_PREFIX), or all

Every subcommand takes ``--json`` (one JSON object per line). Thin over the core:
`shardcache.Cache.stats`, `Cache.where`, the backends' ``clear``.
"""

from __future__ import annotations

import json
from argparse import ArgumentParser
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError

from shardcache.errors import ShardcacheError
from shardcache.protocols import STATES
from shardcache_django.cache import _ShardcacheCache

REPORT_COLUMNS = [
    ("address", "address"),
    ("role", "role"),
    ("up", "reachable"),
    ("ms", "latency_ms"),
    ("keys", "keys"),
    ("memory", "memory_used"),
    ("hits", "hits"),
    ("misses", "misses"),
    ("evicted", "evictions"),
    ("breaker", "breaker"),
    ("serves", "group"),
    ("state", "state"),
]


class Command(BaseCommand):
    help = "See and steer the shardcache caches: info, where, states, clear."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        info = sub.add_parser("info", help="every server of each shardcache cache")
        info.add_argument("alias", nargs="?", help="one CACHES alias (default: all of ours)")
        where = sub.add_parser("where", help="the server that holds a key")
        where.add_argument("key")
        where.add_argument("--alias", default="default")
        where.add_argument("--version", type=int, default=None)
        states = sub.add_parser("states", help="memcache shard states; 'set ADDRESS STATE'")
        states.add_argument("change", nargs="*", help="set ADDRESS STATE")
        states.add_argument("--alias", default=None)
        states.add_argument("--source", default=None, help="WARM_UP: the shard to read through")
        clear = sub.add_parser("clear", help="clear one cache")
        clear.add_argument("alias")
        clear.add_argument("--yes", action="store_true", help="do not ask")
        for command in (info, where, states, clear):
            command.add_argument("--json", action="store_true", help="JSON output")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, "do_" + options["action"])(options)
        except ShardcacheError as exc:
            raise CommandError(str(exc)) from exc

    # --- subcommands -----------------------------------------------------------------------

    def do_info(self, o: dict[str, Any]) -> None:
        for alias in [o["alias"]] if o["alias"] else self.ours():
            reports = self.backend(alias).core.stats()
            if o["json"]:
                for report in reports:
                    self.emit({"alias": alias, **report.as_dict()})
                continue
            self.stdout.write(f"{alias} ({type(self.backend(alias)).__name__})")
            rows = [[_cell(getattr(r, name)) for _, name in REPORT_COLUMNS] for r in reports]
            self.table([title for title, _ in REPORT_COLUMNS], rows)
            for report in reports:
                if report.error:
                    self.stdout.write(f"  {report.address}: {report.error}")

    def do_where(self, o: dict[str, Any]) -> None:
        backend = self.backend(o["alias"])
        made = backend.make_and_validate_key(o["key"], o["version"])
        found = backend.core.where(made).as_dict()
        if o["json"]:
            self.emit({"alias": o["alias"], **found})
            return
        for name, value in found.items():
            self.stdout.write(f"{name:<8} {_cell(value)}")

    def do_states(self, o: dict[str, Any]) -> None:
        if o["change"]:
            self.set_state(o)
        aliases = [o["alias"]] if o["alias"] else self.ours()
        rows = []
        for alias in aliases:
            core = self.backend(alias).core
            if STATES not in core.topology.capabilities:
                if o["alias"]:
                    raise CommandError(f"CACHES[{alias!r}] has no shard states (not memcache)")
                continue
            rows += [
                [alias, r.address, r.state, "yes" if r.reachable else "no"] for r in core.stats()
            ]
        if o["json"]:
            for row in rows:
                self.emit(dict(zip(["alias", "address", "state", "reachable"], row, strict=True)))
        else:
            self.table(["alias", "address", "state", "up"], rows)

    def set_state(self, o: dict[str, Any]) -> None:
        if len(o["change"]) != 3 or o["change"][0] != "set":
            raise CommandError("expected: states set ADDRESS STATE [--source ADDRESS]")
        _, address, state = o["change"]
        aliases = [o["alias"]] if o["alias"] else self.ours()
        memcaches = [a for a in aliases if STATES in self.backend(a).core.topology.capabilities]
        if len(memcaches) != 1:
            raise CommandError(f"say which memcache cache with --alias (found {memcaches})")
        topology = self.backend(memcaches[0]).core.topology
        try:
            topology.share_shard_state(address, state, o["source"])  # type: ignore[attr-defined]
        except ValueError as exc:
            raise CommandError(f"unknown state {state!r}: {exc}") from exc

    def do_clear(self, o: dict[str, Any]) -> None:
        backend = self.backend(o["alias"])
        scope = (
            f"the keys under KEY_PREFIX {backend.key_prefix!r}"
            if backend._clears_by_prefix()
            else "EVERY key of its servers"
        )
        if not o["yes"]:
            answer = input(f"Clear {scope} of CACHES[{o['alias']!r}]? Type 'yes': ")
            if answer.strip() != "yes":
                raise CommandError("not cleared")
        backend.clear()
        if o["json"]:
            self.emit({"cleared": o["alias"], "scope": scope})
        else:
            self.stdout.write(f"cleared {scope} of {o['alias']}")

    # --- helpers ---------------------------------------------------------------------------

    def ours(self) -> list[str]:
        return [alias for alias in settings.CACHES if isinstance(caches[alias], _ShardcacheCache)]

    def backend(self, alias: str) -> _ShardcacheCache:
        if alias not in settings.CACHES:
            raise CommandError(
                f"no cache {alias!r} in CACHES (known: {', '.join(settings.CACHES)})"
            )
        backend = caches[alias]
        if not isinstance(backend, _ShardcacheCache):
            raise CommandError(f"CACHES[{alias!r}] is {type(backend).__name__}, not shardcache's")
        return backend

    def emit(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, default=str, sort_keys=True))

    def table(self, names: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        rows = [[str(cell) for cell in row] for row in rows]
        widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
        self.stdout.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
        for row in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
