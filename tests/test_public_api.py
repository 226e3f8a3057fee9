"""The public surface: every exported name exists, and every module's exports reach the top."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import shardcache
import shardcache.testing

PACKAGES = [shardcache, shardcache.testing]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_every_exported_name_exists(package: ModuleType) -> None:
    names = package.__all__
    assert len(names) == len(set(names))
    assert [name for name in names if not hasattr(package, name)] == []


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.__name__)
def test_module_exports_are_reexported(package: ModuleType) -> None:
    missing = []
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.ispkg or info.name in {"cli", "pytest_plugin"}:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        missing += [n for n in getattr(module, "__all__", []) if n not in package.__all__]
    assert missing == []


def test_every_error_is_a_shardcache_error() -> None:
    from shardcache import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), shardcache.ShardcacheError)
