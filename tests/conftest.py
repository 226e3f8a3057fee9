"""Every test starts with no shared topology: what one test's Django or Flask backends built
(and maybe changed, such as memcache shard states) is closed after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardcache.registry import registry


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    yield
    registry.close()
