"""``flask shardcache``: see and steer the app's shardcache caches (the Flask twin of
``manage.py shardcache_cache``). Registered on the app by the backends' factory.

    flask shardcache info [--json]        every server of each shardcache cache
    flask shardcache where KEY [--json]   the server that holds KEY (with CACHE_KEY_PREFIX)
    flask shardcache states [--json]      memcache shard states
    flask shardcache states set ADDRESS STATE [--source S]   for every process
    flask shardcache clear [--yes]        this prefix's keys (memcache: everything)
"""

from __future__ import annotations

import json
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from shardcache import Cache
from shardcache.protocols import STATES

__all__ = ["group"]


def _ours() -> list[Any]:
    found = current_app.extensions.get("cache", {}).values()
    # Ours are those with a shardcache core (the backends register this group, so this
    # module does not import them).
    backends = [backend for backend in found if isinstance(getattr(backend, "core", None), Cache)]
    if not backends:
        raise click.ClickException("this app has no shardcache cache (CACHE_TYPE)")
    return backends


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


# Flask's AppGroup runs each command inside the app's context.
group = AppGroup("shardcache", help="See and steer the app's shardcache caches.")


@group.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def info(as_json: bool) -> None:
    """Every server of each shardcache cache, with live figures."""
    for backend in _ours():
        reports = backend.core.stats()
        if as_json:
            for report in reports:
                click.echo(json.dumps({"cache": type(backend).__name__, **report.as_dict()}))
            continue
        click.echo(type(backend).__name__)
        for r in reports:
            figures = f"keys {_cell(r.keys)} hits {_cell(r.hits)} misses {_cell(r.misses)}"
            serves = f" {r.group}" if r.group else ""
            state = f" {r.state}" if r.state else ""
            up = "up" if r.reachable else f"DOWN ({r.error})"
            click.echo(
                f"  {r.address:<22} {r.role:<9} {up} {_cell(r.latency_ms)} ms {figures} "
                f"breaker {r.breaker}{serves}{state}"
            )


@group.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="JSON output")
def where(key: str, as_json: bool) -> None:
    """The shard, server and slot that hold KEY, its time to live and size."""
    found = _ours()[0].core.where(key).as_dict()
    if as_json:
        click.echo(json.dumps(found))
    else:
        for name, value in found.items():
            click.echo(f"{name:<8} {_cell(value)}")


@group.command()
@click.argument("change", nargs=-1)
@click.option("--source", default=None, help="WARM_UP: the shard to read through")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def states(change: tuple[str, ...], source: str | None, as_json: bool) -> None:
    """The memcache shards' states; ``set ADDRESS STATE`` changes one for every process
    sharing CACHE_SHARDCACHE_SHARD_STATES_FILE."""
    if change:
        if len(change) != 3 or change[0] != "set":
            raise click.UsageError("expected: states set ADDRESS STATE [--source ADDRESS]")
        memcaches = [b for b in _ours() if STATES in b.core.topology.capabilities]
        if len(memcaches) != 1:
            raise click.ClickException(f"{len(memcaches)} memcache caches: cannot choose")
        memcaches[0].core.topology.share_shard_state(change[1], change[2], source)
    for backend in _ours():
        if STATES not in backend.core.topology.capabilities:
            continue
        for r in backend.core.stats():
            row = {"address": r.address, "state": r.state, "reachable": r.reachable}
            click.echo(json.dumps(row) if as_json else f"{r.address:<22} {r.state}")


@group.command()
@click.option("--yes", is_flag=True, help="do not ask")
def clear(yes: bool) -> None:
    """Clear the app's shardcache caches (their CACHE_KEY_PREFIX's keys)."""
    for backend in _ours():
        name = type(backend).__name__
        if not yes:
            click.confirm(f"Clear {name} (prefix {backend.key_prefix!r})?", abort=True)
        backend.clear()
        click.echo(f"cleared {name}")
