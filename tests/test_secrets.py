"""No password in any error, repr, log record, check or command output; keys shortened."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import pytest
from django.core.cache import caches
from django.core.management import call_command
from django.test import override_settings

from shardcache import Cache, Cluster, HashPool, SentinelClient, ShardError, errors
from shardcache.backends import problems
from shardcache.config import RedisAddress, mask_url
from shardcache.registry import Registry
from shardcache.testing import StandaloneRedis
from shardcache_django.checks import check_caches
from shardcache_django.records.checks import check_record_stores
from shardcache_flask import ShardedRedisCache as FlaskShardedRedisCache

SECRET = "S3cr3tPassw0rd"
BAD_URLS = [
    f"redis://user:{SECRET}@127.0.0.1:6379/abc",  # bad database number
    f"redis://user:{SECRET}@127.0.0.1:notaport/0",  # bad port
    f"redis://:{SECRET}@127.0.0.1:99999/0",  # port out of range
    f"user:{SECRET}@127.0.0.1:x",  # no scheme
    f"redis://127.0.0.1:6379/abc?password={SECRET}",
]


def said(action: Callable[[], Any]) -> str:
    """Everything ``action`` shows: its error's text and repr, or its result's repr."""
    try:
        result = action()
    except Exception as exc:
        return f"{exc} {exc!r} {exc.__cause__!r} {exc.__context__!r}"
    return repr(result)


@pytest.mark.parametrize("url", BAD_URLS)
def test_no_path_that_rejects_a_url_shows_its_password(url: str) -> None:
    shown = [
        said(lambda: RedisAddress.parse(url)),
        said(lambda: HashPool([url])),
        said(lambda: Cluster([url])),
        said(lambda: SentinelClient([url], ["bucket0"])),
        said(lambda: problems("hashpool", [url], {})),
        said(lambda: Registry().cache("cluster", [url], {})),
        said(lambda: FlaskShardedRedisCache.factory(None, {"CACHE_REDIS_URL": url}, [], {})),  # type: ignore[arg-type]
    ]
    entry = {"BACKEND": "shardcache_django.cache.ShardedRedisCache", "LOCATION": [url]}
    records = {"default": {"BACKEND": "redis", "LOCATION": [url]}}
    with override_settings(CACHES={"default": entry}, SHARDCACHE_RECORDS=records):
        shown.append(said(check_caches))
        shown.append(said(lambda: caches["default"].get("k")))
        shown.append(said(check_record_stores))
        out, err = io.StringIO(), io.StringIO()
        shown.append(
            said(lambda: call_command("shardcache_records", "stats", stdout=out, stderr=err))
        )
        shown += [out.getvalue(), err.getvalue()]
    for text in shown:
        assert SECRET not in text
    assert any("***" in text or "bad" in text for text in shown)


def test_reprs_and_logs_show_no_password(
    clean_redis_pool_servers: StandaloneRedis, caplog: pytest.LogCaptureFixture
) -> None:
    # One server that refuses the password, one that is not there: errors and warnings.
    up = clean_redis_pool_servers.urls[0].replace("redis://", f"redis://:{SECRET}@")
    pool = HashPool([up, f"redis://u:{SECRET}@127.0.0.1:1/0"], connect_timeout=0.2)
    cache = Cache(pool, prefix="t:", ignore_errors=True)
    caplog.set_level(logging.DEBUG, logger="shardcache")
    assert cache.get_many([f"k{i}" for i in range(20)]) == {}
    texts = [repr(pool), repr(cache), *(repr(shard) for shard in pool.shards())]
    strict = Cache(pool)
    texts += [said(lambda key=f"k{i}": strict.get(key)) for i in range(20)]
    texts += [record.getMessage() for record in caplog.records]
    assert caplog.records
    for text in texts:
        assert SECRET not in text
    pool.close()


def test_keys_in_errors_and_logs_are_shortened_unless_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    session = "django.contrib.sessions.cache" + "k3yth4t1s4s3ss10n1d"
    error = ShardError("refused", shard="a:1", key=session)
    assert "k3yth4t1s4s3ss10n1d" not in str(error)
    assert errors.key_text(session) == errors.key_text(session)  # stable, to correlate
    monkeypatch.setattr(errors, "SHOW_WHOLE_KEYS", True)
    assert "k3yth4t1s4s3ss10n1d" in str(ShardError("refused", shard="a:1", key=session))


def test_mask_url() -> None:
    assert mask_url(f"redis://u:{SECRET}@h:1/0") == "redis://u:***@h:1/0"
    assert mask_url(f"rediss://:{SECRET}@h:1") == "rediss://:***@h:1"
    assert mask_url("redis://u@h:1/0") == "redis://u@h:1/0"
    assert mask_url(f"h:1/0?db=1&password={SECRET}") == "h:1/0?db=1&password=***"
