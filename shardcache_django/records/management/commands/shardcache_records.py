"""``python manage.py shardcache_records``: inspect and edit a record store.

    shardcache_records leases | stats
    shardcache_records lease NAME --holder H --ttl S | renew NAME --holder H --ttl S
    shardcache_records release NAME --holder H
    shardcache_records get TYPE ID | delete TYPE ID | put TYPE ID --data JSON
    shardcache_records sync TYPE [--since N] [--follow] | latest TYPE [--filter JSON]
    shardcache_records options TYPE [--capacity N] [--ttl SECONDS]

Every subcommand takes ``--store ALIAS`` (default "default") and ``--json``.
"""

from __future__ import annotations

import json
from argparse import SUPPRESS, ArgumentParser
from collections.abc import Iterable, Sequence
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from shardcache.errors import ShardcacheError
from shardcache.records import Options, Record
from shardcache_django.records import stores


class Command(BaseCommand):
    help = "Inspect a shardcache record store: leases, records, changes, options, stats."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        commands = {
            "leases": [],
            "lease": ["name"],
            "renew": ["name"],
            "release": ["name"],
            "stats": [],
            "get": ["type", "id"],
            "delete": ["type", "id"],
            "put": ["type", "id"],
            "sync": ["type"],
            "latest": ["type"],
            "options": ["type"],
        }
        for name, positional in commands.items():
            command = sub.add_parser(name)
            command.add_argument("--store", default="default", help="SHARDCACHE_RECORDS alias")
            command.add_argument("--json", action="store_true", help="JSON output")
            for argument in positional:
                command.add_argument(argument)
            if name in ("lease", "renew", "release"):
                command.add_argument("--holder", required=True, help="who holds the lease")
            if name in ("lease", "renew"):
                command.add_argument("--ttl", type=float, required=True, help="seconds")
            if name == "put":
                command.add_argument("--data", required=True, help="the record's data (JSON)")
            elif name == "sync":
                command.add_argument("--since", type=int, default=0, help="version to start after")
                command.add_argument("--follow", action="store_true", help="wait for changes")
                command.add_argument("--timeout", type=float, default=None, help=SUPPRESS)
            elif name == "latest":
                command.add_argument("--filter", help='e.g. {"status": {"$in": ["a", "b"]}}')
            elif name == "options":
                command.add_argument("--capacity", type=int)
                command.add_argument("--ttl", type=float, help="seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            store = stores[options["store"]]
            getattr(self, "do_" + options["action"])(store, options)
        except (ShardcacheError, ValueError) as exc:
            raise CommandError(str(exc)) from exc

    # --- subcommands -----------------------------------------------------------------------

    def do_leases(self, store: Any, o: dict[str, Any]) -> None:
        self.lease_rows(store.leases(), o)

    def do_lease(self, store: Any, o: dict[str, Any]) -> None:
        """Take the lease, or renew it if ``--holder`` holds it already."""
        if not store.lease(o["name"], o["holder"], o["ttl"]):
            raise CommandError(f"lease {o['name']!r} is held by {self.holder(store, o)}")
        self.lease_row(store, o)

    def do_renew(self, store: Any, o: dict[str, Any]) -> None:
        """Extend a lease ``--holder`` holds; an error if it holds none (expired or taken)."""
        holder = self.holder(store, o)
        if holder != o["holder"] or not store.lease(o["name"], o["holder"], o["ttl"]):
            raise CommandError(
                f"lease {o['name']!r} is not held by {o['holder']!r} (held by {holder})"
            )
        self.lease_row(store, o)

    def do_release(self, store: Any, o: dict[str, Any]) -> None:
        if not store.release(o["name"], o["holder"]):
            raise CommandError(
                f"lease {o['name']!r} is not held by {o['holder']!r} "
                f"(held by {self.holder(store, o)})"
            )
        if o["json"]:
            self.emit({"released": o["name"], "holder": o["holder"]})
        else:
            self.stdout.write(f"released {o['name']} ({o['holder']})")

    def holder(self, store: Any, o: dict[str, Any]) -> str | None:
        return next((x.holder_id for x in store.leases() if x.name == o["name"]), None)

    def lease_row(self, store: Any, o: dict[str, Any]) -> None:
        self.lease_rows([x for x in store.leases() if x.name == o["name"]], o)

    def lease_rows(self, leases: Iterable[Any], o: dict[str, Any]) -> None:
        rows = [[x.name, x.holder_id, f"{x.expires_in:.1f}"] for x in leases]
        self.table(["name", "holder", "expires in (s)"], rows, o)

    def do_stats(self, store: Any, o: dict[str, Any]) -> None:
        stats = store.stats()
        if o["json"]:
            self.emit(stats)
            return
        for label, key in [
            ("server version", "server_version"),
            ("last version", "last_version"),
            ("change log entries", "changes"),
            ("oldest retained change", "oldest_change"),
        ]:
            self.stdout.write(f"{label:<24}{stats[key]}")
        self.table(["type", "records"], sorted(stats["types"].items()), o)

    def do_get(self, store: Any, o: dict[str, Any]) -> None:
        self.records([store.get(o["type"], o["id"])], o)

    def do_put(self, store: Any, o: dict[str, Any]) -> None:
        data = self.json_arg(o["data"], "--data")
        if not isinstance(data, dict):
            raise CommandError("--data must be a JSON object")
        store.put([Record(o["type"], o["id"], data)])
        self.records([store.get(o["type"], o["id"])], o)

    def do_delete(self, store: Any, o: dict[str, Any]) -> None:
        store.get(o["type"], o["id"])  # RecordNotFound if there is nothing to delete
        store.put([Record(o["type"], o["id"], deleted=True)])
        if o["json"]:
            self.emit({"deleted": [o["type"], o["id"]]})
        else:
            self.stdout.write(f"deleted {o['type']}/{o['id']}")

    def do_sync(self, store: Any, o: dict[str, Any]) -> None:
        # sync_latest's server version, not stats()': a store never written has none yet
        # (a Redis store makes one on first use), and a sync from it would be "reset".
        server_version, _, _ = store.sync_latest(o["type"])
        changes = store.sync(o["type"], server_version, o["since"], o["follow"], o["timeout"])
        if o["follow"] or o["json"]:
            for change in changes:  # one line each, as they come
                self.records([change], o, header=False)
        else:
            self.records(changes, o)

    def do_latest(self, store: Any, o: dict[str, Any]) -> None:
        spec = self.json_arg(o["filter"], "--filter") if o["filter"] else None
        _, _, records = store.sync_latest(o["type"], spec)
        self.records(records, o)

    def do_options(self, store: Any, o: dict[str, Any]) -> None:
        if o["capacity"] is not None or o["ttl"] is not None:
            current = store.get_options(o["type"])
            store.set_options(
                o["type"],
                Options(
                    capacity=current.capacity if o["capacity"] is None else o["capacity"],
                    ttl=current.ttl if o["ttl"] is None else o["ttl"],
                ),
            )
        found = store.get_options(o["type"])
        row = {"type": o["type"], "capacity": found.capacity, "ttl": found.ttl}
        if o["json"]:
            self.emit(row)
        else:
            self.table(["type", "capacity", "ttl (s)"], [list(row.values())], o)

    # --- output ----------------------------------------------------------------------------

    def json_arg(self, text: str, name: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{name} is not valid JSON: {exc}") from exc

    def emit(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, default=str, sort_keys=True))

    def records(self, records: Iterable[Record], o: dict[str, Any], header: bool = True) -> None:
        if o["json"]:
            for r in records:
                self.emit(
                    {
                        "type": r.type,
                        "id": r.id,
                        "version": r.version,
                        "data": r.data.hex() if isinstance(r.data, bytes) else r.data,
                        "modified_at": r.modified_at,
                        "deleted_at": r.deleted_at,
                    }
                )
            return
        rows = [
            [
                r.version,
                r.type,
                r.id,
                "deleted" if r.is_deleted else json.dumps(r.data, default=str)[:60],
                r.modified_at.isoformat(timespec="seconds") if r.modified_at else "",
            ]
            for r in records
        ]
        self.table(["version", "type", "id", "data", "modified"], rows, o, header=header)

    def table(
        self,
        names: Sequence[str],
        rows: Iterable[Sequence[Any]],
        o: dict[str, Any],
        header: bool = True,
    ) -> None:
        rows = [[str(cell) for cell in row] for row in rows]
        if o["json"]:
            for row in rows:
                self.emit(dict(zip(names, row, strict=True)))
            return
        widths = [max([len(n), *(len(r[i]) for r in rows)]) for i, n in enumerate(names)]
        if header:
            self.stdout.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)))
        for row in rows:
            self.stdout.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
