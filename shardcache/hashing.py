"""Key hashing and shard selection: pure functions, no I/O, no clocks.

Hash functions take ``str`` (encoded as UTF-8) or ``bytes`` and return an unsigned int:
`fnv1_32`, `fnv1a_32`, `murmur3_32` (x86_32, seed 0; the ``mmh3`` C extension when installed),
`crc32`, `crc16` (XMODEM, as Redis Cluster uses) and `slot` (the cluster slot, honouring
``{hash tags}``).

Selectors map a key to a shard index among N named shards. `ModuloSelector` is
``hash(key) % N``: fast, but adding a shard moves most keys. `Ketama` (points on a ring) and
`Rendezvous` (highest score wins) move only about 1/N of the keys when a shard joins, and
depend on the shards' names, not their order.
"""

from __future__ import annotations

import binascii
import bisect
import hashlib
import zlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from shardcache.errors import ConfigurationError

__all__ = [
    "HASH_FUNCTIONS",
    "Ketama",
    "ModuloSelector",
    "Rendezvous",
    "Selector",
    "crc16",
    "crc32",
    "fnv1_32",
    "fnv1a_32",
    "make_selector",
    "murmur3_32",
    "slot",
]

Key = str | bytes
HashFunction = Callable[[bytes], int]

_MASK32 = 0xFFFFFFFF
_FNV32_OFFSET = 0x811C9DC5
_FNV32_PRIME = 0x01000193
CLUSTER_SLOTS = 16384


def _bytes(key: Key) -> bytes:
    return key.encode() if isinstance(key, str) else key


def fnv1_32(key: Key) -> int:
    """FNV-1, 32 bits: multiply, then xor each byte."""
    h = _FNV32_OFFSET
    for byte in _bytes(key):
        h = ((h * _FNV32_PRIME) & _MASK32) ^ byte
    return h


def fnv1a_32(key: Key) -> int:
    """FNV-1a, 32 bits: xor each byte, then multiply."""
    h = _FNV32_OFFSET
    for byte in _bytes(key):
        h = ((h ^ byte) * _FNV32_PRIME) & _MASK32
    return h


def _murmur3_32_py(data: bytes, seed: int = 0) -> int:
    c1, c2 = 0xCC9E2D51, 0x1B873593
    h = seed & _MASK32
    tail = len(data) & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * c1) & _MASK32
        k = ((k << 15) | (k >> 17)) & _MASK32
        k = (k * c2) & _MASK32
        h ^= k
        h = ((h << 13) | (h >> 19)) & _MASK32
        h = (h * 5 + 0xE6546B64) & _MASK32
    rest = data[tail:]
    if rest:
        k = int.from_bytes(rest, "little")
        k = (k * c1) & _MASK32
        k = ((k << 15) | (k >> 17)) & _MASK32
        k = (k * c2) & _MASK32
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


_mmh3: Any
try:
    import mmh3 as _mmh3
except ImportError:  # pragma: no cover - depends on the environment
    _mmh3 = None


def murmur3_32(key: Key) -> int:
    """MurmurHash3 x86_32 with seed 0 (mmh3's C code when installed, else pure Python)."""
    if _mmh3 is not None:
        return int(_mmh3.hash(_bytes(key), 0, signed=False))
    return _murmur3_32_py(_bytes(key))


def crc32(key: Key) -> int:
    """CRC-32 (zlib's)."""
    return zlib.crc32(_bytes(key)) & _MASK32


def crc16(key: Key) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of Redis Cluster slots
    (``binascii.crc_hqx`` computes exactly that, in C)."""
    return binascii.crc_hqx(_bytes(key), 0)


def slot(key: Key) -> int:
    """The Redis Cluster slot of ``key``.

    Only the part between the first ``{`` and the first ``}`` after it is hashed, if that part
    is not empty; otherwise the whole key is (the cluster specification's hash-tag rule).
    """
    data = _bytes(key)
    start = data.find(b"{")
    if start != -1:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc16(data) % CLUSTER_SLOTS


HASH_FUNCTIONS: dict[str, HashFunction] = {
    "fnv1_32": fnv1_32,
    "fnv1a_32": fnv1a_32,
    "murmur3_32": murmur3_32,
    "crc32": crc32,
}


class Selector(Protocol):
    """Maps a key to the index of its shard among a fixed list of named shards."""

    def __call__(self, key: bytes) -> int: ...


class ModuloSelector:
    """``hash(key) % N``. Adding a shard moves about (N-1)/N of all keys."""

    def __init__(self, hash_function: HashFunction, count: int) -> None:
        if count < 1:
            raise ConfigurationError("a selector needs at least one shard")
        self.hash_function = hash_function
        self.count = count

    def __call__(self, key: bytes) -> int:
        return self.hash_function(key) % self.count


class Ketama:
    """Consistent hashing on a ring, as libketama: ``points_per_shard`` points per shard
    (times its weight), each from MD5 of ``"<name>-<i>"``; a key goes to the first point at
    or after MD5(key) on the ring."""

    def __init__(
        self,
        names: Sequence[str],
        weights: Sequence[int] | None = None,
        points_per_shard: int = 160,
    ) -> None:
        if not names:
            raise ConfigurationError("Ketama needs at least one shard")
        weights = weights or [1] * len(names)
        ring: list[tuple[int, int]] = []
        for index, (name, weight) in enumerate(zip(names, weights, strict=True)):
            for i in range(points_per_shard * weight // 4):
                digest = hashlib.md5(f"{name}-{i}".encode(), usedforsecurity=False).digest()
                ring.extend(
                    (int.from_bytes(digest[4 * j : 4 * j + 4], "little"), index) for j in range(4)
                )
        ring.sort()
        self._points = [point for point, _ in ring]
        self._shards = [index for _, index in ring]

    def __call__(self, key: bytes) -> int:
        digest = hashlib.md5(key, usedforsecurity=False).digest()
        position = bisect.bisect_left(self._points, int.from_bytes(digest[:4], "little"))
        return self._shards[position % len(self._points)]


class Rendezvous:
    """Highest-random-weight hashing: the shard whose ``murmur3(name + "-" + key)`` is highest."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ConfigurationError("Rendezvous needs at least one shard")
        self._prefixes = [f"{name}-".encode() for name in names]

    def __call__(self, key: bytes) -> int:
        scores = [murmur3_32(prefix + key) for prefix in self._prefixes]
        return scores.index(max(scores))


def make_selector(how: str | HashFunction | Selector, names: Sequence[str]) -> Selector:
    """Build the selector for shards called ``names`` from a hash name, ``"ketama"``,
    ``"rendezvous"``, or a hash function ``f(bytes) -> int`` (used modulo N)."""
    if how == "ketama":
        return Ketama(names)
    if how == "rendezvous":
        return Rendezvous(names)
    if isinstance(how, str):
        try:
            return ModuloSelector(HASH_FUNCTIONS[how], len(names))
        except KeyError:
            known = ", ".join([*HASH_FUNCTIONS, "ketama", "rendezvous"])
            raise ConfigurationError(f"unknown hash {how!r}; choose one of {known}") from None
    if isinstance(how, (Ketama, Rendezvous, ModuloSelector)):
        return how
    if callable(how):
        return ModuloSelector(how, len(names))
    raise ConfigurationError(f"hash must be a name or a callable, not {how!r}")
