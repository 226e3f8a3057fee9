"""django-redis's own test suite, run against our three Redis backends.

    python -m tests.compat.django_redis [--keep DIR] [-k EXPR]

It takes the test suite from the sdist of the django-redis that is installed (pip downloads
it once into ``.cache/``), starts a local topology of each kind, points django-redis's
``cache`` fixture at our backend through a settings module of its own kind, and runs
``test_backend.py``, ``test_backend_sorted_sets.py`` and ``test_session.py``.

Every test that fails must be listed in `EXPECTED` with its reason (the README's migration
guide shows the same list), and every listed test must still fail on some backend: an
unlisted failure, or a listed test that now passes, fails the run. Nothing of django-redis's
is changed but the list of settings modules its conftest parametrizes over.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from shardcache.testing import RedisCluster, RedisSentinel, StandaloneRedis

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / ".cache"
FILES = ["tests/test_backend.py", "tests/test_backend_sorted_sets.py", "tests/test_session.py"]
BACKENDS = {
    "hashpool": "ShardedRedisCache",
    "cluster": "RedisClusterCache",
    "sentinel": "RedisSentinelCache",
}

# test name (without the parameter) -> why it fails. "internals": the test reaches into
# django-redis's own client classes (mocks of them, or their private attributes); the rest
# are documented differences (README, "Migrating from django-redis").
_INTERNALS = "internals: mocks or reads django-redis's client object ({})"
_SPREAD = (
    "difference: the keys of a multi-key set command must be on one shard "
    "(cluster: one {hash tag}); on cluster and hashpool these keys are not"
)
EXPECTED: dict[str, str] = {
    "TestDjangoRedisCache::test_close_client": _INTERNALS.format("client.close"),
    "TestDjangoRedisCache::test_close_with_signal_parameter": _INTERNALS.format("client.close"),
    "TestDjangoRedisCache::test_delete_pattern_with_custom_count": _INTERNALS.format(
        "client.delete_pattern"
    ),
    "TestDjangoRedisCache::test_delete_pattern_with_settings_default_scan_count": (
        _INTERNALS.format("client.delete_pattern")
    ),
    "TestDjangoRedisCache::test_set_call_empty_pipeline": _INTERNALS.format("client.set"),
    "TestDjangoRedisCache::test_primary_replica_switching": _INTERNALS.format(
        "client._server and get_client_with_index"
    ),
    "TestDjangoRedisCache::test_primary_replica_switching_with_index": _INTERNALS.format(
        "client.get_client_with_index"
    ),
    "TestDjangoRedisCache::test_intenum": _INTERNALS.format("client._serializer"),
    "TestDjangoRedisCache::test_save_dict": _INTERNALS.format("client._serializer"),
    "TestDjangoRedisCache::test_sscan_with_match": _INTERNALS.format(
        "client._has_compression_enabled"
    ),
    "TestDjangoRedisCache::test_sscan_iter_with_match": _INTERNALS.format(
        "client._has_compression_enabled"
    ),
    "TestDjangoRedisCache::test_hash_key_structure_in_redis": (
        "difference: get_client() without a key on several independent servers (hashpool) "
        "cannot know which server to give: pass the key"
    ),
    **{
        f"TestDjangoRedisCache::test_{name}": _SPREAD
        for name in [
            "interstore",
            "sdiff",
            "sdiffstore",
            "sdiffstore_with_different_keys_versions_with_initial_set_in_version",
            "sdiffstore_with_different_keys_versions_without_initial_set_in_version",
            "sdiffstore_with_keys_version",
            "sinter",
            "smove",
            "sunion",
            "sunionstore",
        ]
    },
}

SETTINGS = """\
import json, os

SECRET_KEY = "django_tests_secret_key"
INSTALLED_APPS = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
USE_TZ = False
_BACKEND = "shardcache_django.cache.{backend}"
_LOCATION = json.loads(os.environ["SHARDCACHE_COMPAT_LOCATION"])
_OPTIONS = json.loads(os.environ["SHARDCACHE_COMPAT_OPTIONS"])
_DEAD = json.loads(os.environ["SHARDCACHE_COMPAT_DEAD"])
CACHES = {{
    "default": {{"BACKEND": _BACKEND, "LOCATION": _LOCATION, "OPTIONS": _OPTIONS}},
    "doesnotexist": {{"BACKEND": _BACKEND, "LOCATION": _DEAD, "OPTIONS": _OPTIONS}},
    "sample": {{"BACKEND": _BACKEND, "LOCATION": _LOCATION, "OPTIONS": _OPTIONS}},
    "with_prefix": {{
        "BACKEND": _BACKEND, "LOCATION": _LOCATION, "OPTIONS": _OPTIONS,
        "KEY_PREFIX": "test-prefix",
    }},
}}
"""


def sdist_tests(workdir: Path) -> Path:
    """django-redis's ``tests`` package, extracted into ``workdir``."""
    version = importlib.metadata.version("django-redis")
    CACHE_DIR.mkdir(exist_ok=True)
    archive = next(CACHE_DIR.glob(f"django_redis-{version}.tar.gz"), None)
    if archive is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        command += ["-q", "-d", str(CACHE_DIR), f"django-redis=={version}"]
        subprocess.run(command, check=True)
        archive = next(CACHE_DIR.glob(f"django_redis-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in f"/{m.name}"]
        tar.extractall(workdir, members=members, filter="data")
    tests = next(workdir.glob("*/tests"))
    conftest = tests / "conftest.py"
    text = conftest.read_text()
    if "SHARDCACHE_COMPAT" in text:
        return tests.parent  # kept from an earlier run (--keep)
    text, count = re.subn(
        r"settings = \[[^\]]*\]", 'settings = [__import__("os").environ["SHARDCACHE_COMPAT"]]', text
    )
    if count != 1:
        raise SystemExit("django-redis's conftest changed: cannot set its settings list")
    conftest.write_text(text)
    return tests.parent


@contextmanager
def topologies() -> Iterator[dict[str, tuple[list[str], dict[str, Any], list[str]]]]:
    """kind -> (LOCATION, OPTIONS, a LOCATION where nothing answers)."""
    with ExitStack() as stack:
        pool = stack.enter_context(StandaloneRedis(count=2))
        cluster = stack.enter_context(RedisCluster(masters=3, replicas_per_master=0))
        sentinel = stack.enter_context(
            RedisSentinel(names=("bucket0",), replicas_per_master=0, sentinels=1, quorum=1)
        )
        sentinels = [f"127.0.0.1:{port}" for _, port in sentinel.sentinel_addresses]
        yield {
            "hashpool": (pool.urls, {}, ["redis://127.0.0.1:1/0"]),
            "cluster": ([cluster.nodes[0].address], {}, ["127.0.0.1:1"]),
            "sentinel": (sentinels, {"MASTERS": ["bucket0"]}, ["127.0.0.1:1"]),
        }


def run(
    kind: str, root: Path, where: tuple[list[str], dict[str, Any], list[str]], extra: list[str]
) -> dict[str, str]:
    """Run the suite on ``kind``: test id -> "passed", "failed" or "skipped"."""
    location, options, dead = where
    name = f"shardcache_{kind}"
    (root / "tests" / "settings" / f"{name}.py").write_text(SETTINGS.format(backend=BACKENDS[kind]))
    report = root / f"{name}.xml"
    env = {
        **os.environ,
        "SHARDCACHE_COMPAT": name,
        "SHARDCACHE_COMPAT_LOCATION": json.dumps(location),
        "SHARDCACHE_COMPAT_OPTIONS": json.dumps(options),
        "SHARDCACHE_COMPAT_DEAD": json.dumps(dead),
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    command = [sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider"]
    command += ["-p", "no:randomly", "-o", "addopts=", "-c", "/dev/null", "--rootdir", str(root)]
    command += ["--tb=no", "-rN", "--junitxml", str(report), *extra]  # the report below says it
    subprocess.run(command, cwd=root, env=env, check=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        test = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[test] = "failed"
        elif case.find("skipped") is not None:
            outcomes[test] = "skipped"
        else:
            outcomes[test] = "passed"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="extract and run in this directory")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    parser.add_argument("--kind", action="append", choices=sorted(BACKENDS), help="only these")
    args, extra = parser.parse_known_args(argv)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="django-redis-suite-"))
    try:
        root = sdist_tests(workdir)
        results: dict[str, dict[str, str]] = {}
        with topologies() as where:
            for kind in args.kind or BACKENDS:
                results[kind] = run(kind, root, where[kind], extra)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    return report(results)


def _base(test: str) -> str:
    return test.split("[", 1)[0]


def report(results: dict[str, dict[str, str]]) -> int:
    problems = []
    failing: set[str] = set()
    for kind, outcomes in results.items():
        counts = {
            o: sum(1 for v in outcomes.values() if v == o) for o in ("passed", "failed", "skipped")
        }
        print(f"{kind}: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items()))
        for test, outcome in sorted(outcomes.items()):
            if outcome != "failed":
                continue
            failing.add(_base(test))
            if _base(test) not in EXPECTED:
                problems.append(f"{kind}: {test} fails and is not in EXPECTED")
    for test in sorted(set(EXPECTED) - failing):
        problems.append(f"{test} is in EXPECTED but passes everywhere now: take it out")
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
