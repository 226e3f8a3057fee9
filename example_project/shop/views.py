"""The example shop's views: per-view caching, template fragments, the low-level API (async
too), sessions in the cache, and a small job queue on the record store (leases and a
change feed)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import cache_page
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from shardcache.records import Record
from shardcache_django.records import stores

PRODUCTS = [{"pk": pk, "name": f"product {pk}"} for pk in range(1, 21)]
JOB = "job"


def home(request: HttpRequest) -> HttpResponse:
    """A session counter (the "sessions" cache) and a catalogue in a cached fragment
    ("default", the cluster)."""
    request.session["visits"] = visits = request.session.get("visits", 0) + 1
    context = {"visits": visits, "products": PRODUCTS, "rendered": time.time()}
    return render(request, "shop/home.html", context)


@cache_page(30, cache="pool")
def product(request: HttpRequest, pk: int) -> JsonResponse:
    """A whole response cached for 30 s on the hash pool; the work it saves is a sleep."""
    time.sleep(0.005)
    return JsonResponse({"pk": pk, "name": f"product {pk}", "price": pk * 1.25})


async def stats(request: HttpRequest) -> JsonResponse:
    """The low-level API, natively async: a counter and a batch read on the cluster."""
    cache = caches["default"]
    views = await cache.aincr("stats:views", ignore_key_check=True)
    await cache.aset_many({"stats:last": time.time(), "stats:by": "async view"}, timeout=60)
    found = await cache.aget_many(["stats:last", "stats:by"])
    return JsonResponse({"views": views, **found})


def session(request: HttpRequest) -> JsonResponse:
    """The session's own counter: it survives a sentinel failover."""
    request.session["count"] = count = request.session.get("count", 0) + 1
    return JsonResponse({"count": count, "session": request.session.session_key})


def memcached(request: HttpRequest, name: str) -> JsonResponse:
    """A recomputable value on memcache (IGNORE_ERRORS: a missing shard is a miss)."""
    cache = caches["memcache"]
    value = cache.get_or_set(f"greeting:{name}", lambda: f"hello {name}", timeout=60)
    return JsonResponse({"name": name, "value": value})


@csrf_exempt
@require_POST
def jobs(request: HttpRequest) -> JsonResponse:
    """Queue a job: a record of type "job", state "queued"."""
    body = json.loads(request.body or b"{}")
    job_id = str(body.get("id") or uuid.uuid4().hex[:8])
    stores["default"].put([Record(JOB, job_id, {"state": "queued", "task": body.get("task")})])
    return JsonResponse({"queued": job_id})


@csrf_exempt
@require_POST
def claim(request: HttpRequest) -> JsonResponse:
    """A worker claims the oldest queued job: a lease on it, then its state moves on."""
    store = stores["default"]
    worker = json.loads(request.body or b"{}").get("worker", "worker")
    _, _, queued = store.sync_latest(JOB, {"state": "queued"})
    for job in queued:
        if store.lease(f"job:{job.id}", worker, 30):
            store.patch(
                [Record(JOB, job.id, {"state": "running", "worker": worker})], ["state", "worker"]
            )
            return JsonResponse({"claimed": job.id, "worker": worker})
    return JsonResponse({"claimed": None})


def changes(request: HttpRequest) -> JsonResponse:
    """The change feed of jobs after ``?since=`` (a record version)."""
    store = stores["default"]
    server_version, _, _ = store.sync_latest(JOB)
    since = int(request.GET.get("since", 0))
    feed = [_change(r) for r in store.sync(JOB, server_version, since)]
    return JsonResponse({"changes": feed})


def _change(record: Record) -> dict[str, Any]:
    return {"id": record.id, "version": record.version, "data": record.data}


@csrf_exempt
@require_POST
def memcache_states(request: HttpRequest) -> JsonResponse:
    """Operations: set the memcache shards' states in this process, e.g.
    ``[["127.0.0.1:11211", "WARM_UP", "127.0.0.1:11212"], ...]``."""
    states = json.loads(request.body)
    caches["memcache"].update_shard_states([_state(entry) for entry in states])
    return JsonResponse({"states": states})


def _state(entry: list[str]) -> Any:
    from shardcache import MemcachedState, ShardState

    source = entry[2] if len(entry) > 2 else None
    return ShardState(entry[0], MemcachedState(entry[1]), source)
