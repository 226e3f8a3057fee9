"""The public surface: every exported name exists, and the names users import from the
package top level (DESIGN.md section 1) are re-exported there."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

import shardcache
import shardcache.records
import shardcache.testing

# package -> the modules whose whole __all__ the package re-exports
REEXPORTED = {
    shardcache: ["errors", "cache", "topologies"],
    shardcache.testing: ["cluster", "local", "sentinel", "servers", "standalone"],
    shardcache.records: ["base", "memory", "redis"],
}
MODULES = [
    "shardcache.cache",
    "shardcache.codec",
    "shardcache.compressors",
    "shardcache.config",
    "shardcache.connections",
    "shardcache.errors",
    "shardcache.hashing",
    "shardcache.near",
    "shardcache.fence",
    "shardcache.protocols",
    "shardcache.serializers",
    "shardcache.topologies",
    "shardcache.testing",
    "shardcache.aio",
    "shardcache.backends",
    "shardcache.lifecycle",
    "shardcache.registry",
    "shardcache.testing.postgres",
    "shardcache.records",
    "shardcache.records.base",
    "shardcache.records.memory",
    "shardcache.records.model",
    "shardcache.records.redis",
    "shardcache_flask",
]


@pytest.mark.parametrize("name", ["shardcache", *MODULES])
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    assert [n for n in exported if not hasattr(module, n)] == []


@pytest.mark.parametrize("package", list(REEXPORTED), ids=lambda p: p.__name__)
def test_module_exports_are_reexported(package: ModuleType) -> None:
    missing = []
    for name in REEXPORTED[package]:
        module = importlib.import_module(f"{package.__name__}.{name}")
        missing += [n for n in module.__all__ if n not in package.__all__]
    assert missing == []


def test_every_error_is_a_shardcache_error() -> None:
    from shardcache import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), shardcache.ShardcacheError)


def test_the_readme_names_every_option_each_backend_takes() -> None:
    # The Django section lists the OPTIONS; a new option must be documented there too.
    from pathlib import Path

    from shardcache.backends import OPTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    django = readme.split("\n## Django\n")[1].split("\n## ")[0]
    missing = {
        kind: sorted(name for name in names if f"`{name}`" not in django)
        for kind, names in OPTIONS.items()
    }
    assert missing == {kind: [] for kind in OPTIONS}
