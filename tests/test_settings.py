"""Backend settings are read once: every option and alias, and a check error naming the
option for each bad value (never a ValueError at the first request)."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from shardcache.backends import ALIASES, OPTIONS, problems, read_settings
from shardcache.registry import Registry
from shardcache.testing import StandaloneRedis
from shardcache_django.cache import ShardedRedisCache
from shardcache_django.checks import check_caches

LOCATIONS = {
    "hashpool": ["127.0.0.1:6379"],
    "cluster": ["127.0.0.1:7000"],
    "sentinel": ["127.0.0.1:26379"],
    "memcache": ["127.0.0.1:11211"],
}
NEEDED = {"sentinel": {"MASTERS": ["bucket0"]}}

# A good and a bad value for every option some backend takes.
VALUES: dict[str, tuple[Any, Any]] = {
    "CONNECT_TIMEOUT": (0.5, "abc"),
    "SOCKET_TIMEOUT": ("2", 0),
    "MAX_CONNECTIONS": (8, 0),
    "COMPRESS_THRESHOLD": (100, -1),
    "MAX_VALUE_SIZE": (1000, "big"),
    "MAX_ATTEMPTS": (3, 0),
    "REDIRECT_BUDGET": (0.5, 0),
    "DB": (1, -1),
    "FAILOVER_PAUSE": (1.5, "soon"),
    "RETRY_TIMEOUT": (1, -2),
    "IGNORE_ERRORS": (True, "yes"),
    "LOG_IGNORED_ERRORS": (False, "no"),
    "READ_FROM_REPLICAS": (False, "no"),
    "INVALIDATE_NON_ACTIVE": (1, 2),
    "SHARD_STATES_FILE": (os.path.join(tempfile.gettempdir(), "states.json"), "/no/such/dir/s"),
    "STAMPEDE": ({"BETA": 1, "WAIT": 5}, {"WAIT": "soon"}),
    "NEAR_CACHE": ({"MAX_ENTRIES": 100, "PREFIXES": ["a:"]}, {"MAX_ENTRIES": 0}),
    "SERIALIZER": ("json", "yaml"),
    "COMPRESSOR": ("zlib", "brotli"),
    "SIGNING_SECRET": (["a newer secret!!", "an older secret!"], "short"),
    "HASH": ("ketama", "md6"),
    "SHARD_FUNC": ("rendezvous", "sha9"),
    "SHARD_STATES": ([["127.0.0.1:11211", "WARM_UP"]], [["127.0.0.1:11211", "SLEEPY"]]),
    "MASTERS": (["bucket0", "bucket1"], []),
    "USERNAME": ("app", None),
    "PASSWORD": ("secret", None),
    "SENTINEL_USERNAME": ("sentinel", None),
    "SENTINEL_PASSWORD": ("secret", None),
    "SSL_CA_CERTS": ("/etc/ssl/ca.pem", None),
    "SSL_CERTFILE": ("/etc/ssl/client.pem", None),
    "SSL_KEYFILE": ("/etc/ssl/client.key", None),
    "SSL_CERT_REQS": ("required", None),
    "CONNECTION_POOL_KWARGS": ({"socket_keepalive": True}, {"decode_responses": True}),
}
CASES = [(kind, name) for kind, names in OPTIONS.items() for name in sorted(names)]


def test_every_option_is_covered() -> None:
    assert {name for names in OPTIONS.values() for name in names} == set(VALUES)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_each_option_takes_a_good_value_and_names_itself_on_a_bad_one(kind: str, name: str) -> None:
    good, bad = VALUES[name]
    settings, found = read_settings(kind, LOCATIONS[kind], {**NEEDED.get(kind, {}), name: good})
    assert found == []
    assert name in settings.options
    if bad is None:
        return  # any text goes (credentials, paths)
    found = problems(kind, LOCATIONS[kind], {**NEEDED.get(kind, {}), name: bad})
    assert found, name
    text = " ".join(message for _, message in found)
    assert name in text or str(bad) in text


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_from_django_redis_are_understood(alias: str) -> None:
    value = True if ALIASES[alias] in ("IGNORE_ERRORS", "LOG_IGNORED_ERRORS") else 2
    settings, found = read_settings("hashpool", LOCATIONS["hashpool"], {alias: value})
    assert found == []
    assert settings.options == {ALIASES[alias]: value}
    bad = problems("hashpool", LOCATIONS["hashpool"], {alias: "abc"})
    assert alias in bad[0][1]


def test_django_redis_options_get_a_message_naming_what_replaces_them() -> None:
    found = problems("hashpool", LOCATIONS["hashpool"], {"CLIENT_CLASS": "x.y.ShardClient"})
    assert "RedisClusterCache" in found[0][1]


@pytest.mark.parametrize(
    ("kwarg", "option", "value"),
    [
        ("max_connections", "MAX_CONNECTIONS", 8),
        ("socket_timeout", "SOCKET_TIMEOUT", 2.0),
        ("socket_connect_timeout", "CONNECT_TIMEOUT", 0.5),
        ("username", "USERNAME", "app"),
        ("password", "PASSWORD", "secret"),
        ("ssl_ca_certs", "SSL_CA_CERTS", "/etc/ssl/ca.pem"),
    ],
)
def test_redis_py_pool_kwargs_become_our_options(kwarg: str, option: str, value: Any) -> None:
    settings, found = read_settings(
        "hashpool", LOCATIONS["hashpool"], {"CONNECTION_POOL_KWARGS": {kwarg: value}}
    )
    assert found == []
    assert settings.options == {option: value}


def test_redis_py_pool_kwargs_are_checked_like_options() -> None:
    def messages(kwargs: Any, **options: Any) -> str:
        found = problems(
            "hashpool", LOCATIONS["hashpool"], {"CONNECTION_POOL_KWARGS": kwargs, **options}
        )
        return " | ".join(message for _, message in found)

    assert "must be a number of seconds > 0" in messages({"socket_timeout": "abc"})
    assert "repeats OPTIONS['SOCKET_TIMEOUT']" in messages({"socket_timeout": 1}, SOCKET_TIMEOUT=2)
    assert "codec decodes" in messages({"decode_responses": True})
    assert "retry rule" in messages({"retry_on_timeout": True})
    assert "RESP2" in messages({"protocol": 3})
    assert "not passed on" in messages({"socket_flavour": "x"})
    assert "must be a dict" in messages(["socket_keepalive"])
    assert "'db'" in messages({"db": 1})  # a hash pool's database is in each server's URL
    settings, found = read_settings(
        "sentinel",
        LOCATIONS["sentinel"],
        {"MASTERS": ["b0"], "CONNECTION_POOL_KWARGS": {"db": 2, "client_name": "web"}},
    )
    assert found == []
    assert settings.options["DB"] == 2
    assert settings.options["CONNECTION_POOL_KWARGS"] == {"client_name": "web"}


def test_passed_pool_kwargs_reach_the_connections(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    registry = Registry()
    kwargs = {"client_name": "shardcache-web", "socket_keepalive": True}
    cache = registry.cache(
        "hashpool", clean_redis_pool_servers.urls, {"CONNECTION_POOL_KWARGS": kwargs}
    )
    cache.set_many({f"k{i}": i for i in range(30)})  # through each server's lean pool
    for server in clean_redis_pool_servers.servers:
        with server.client() as raw:
            assert "shardcache-web" in [c["name"] for c in raw.client_list()]
    registry.close()


def test_a_bad_value_fails_the_checks_and_first_use_alike() -> None:
    entry = {
        "BACKEND": "shardcache_django.cache.ShardedRedisCache",
        "LOCATION": LOCATIONS["hashpool"],
        "OPTIONS": {"CONNECT_TIMEOUT": "abc"},
    }
    with override_settings(CACHES={"default": entry}):
        assert [e.id for e in check_caches()] == ["shardcache.E001"]
    with pytest.raises(ImproperlyConfigured, match="CONNECT_TIMEOUT"):
        ShardedRedisCache(entry["LOCATION"], {"OPTIONS": entry["OPTIONS"]}).get("k")


def test_spellings_of_one_entry_share_a_topology(
    clean_redis_pool_servers: StandaloneRedis,
) -> None:
    registry = Registry()
    urls = clean_redis_pool_servers.urls
    ours = registry.cache("hashpool", urls, {"CONNECT_TIMEOUT": 2, "IGNORE_ERRORS": True})
    theirs = registry.cache("hashpool", urls, {"SOCKET_CONNECT_TIMEOUT": 2.0})
    assert ours.topology is theirs.topology
    assert ours.ignore_errors is True
    registry.close()
