"""shardcache.hashing: published test vectors, distribution, and key movement."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardcache import hashing
from shardcache.errors import ConfigurationError
from shardcache.hashing import (
    Ketama,
    Rendezvous,
    crc16,
    crc32,
    fnv1_32,
    fnv1a_32,
    make_selector,
    murmur3_32,
    slot,
)

# FNV reference vectors (the FNV authors' test suite, 32-bit).
FNV_VECTORS = [
    (b"", 0x811C9DC5, 0x811C9DC5),
    (b"a", 0x050C5D7E, 0xE40C292C),
    (b"foobar", 0x31F0B262, 0xBF9CF968),
]


@pytest.mark.parametrize(("data", "fnv1", "fnv1a"), FNV_VECTORS)
def test_fnv_reference_vectors(data: bytes, fnv1: int, fnv1a: int) -> None:
    assert fnv1_32(data) == fnv1
    assert fnv1a_32(data) == fnv1a
    assert fnv1a_32(data.decode()) == fnv1a  # str keys are UTF-8


# MurmurHash3 x86_32, seed 0 (the reference implementation's outputs).
MURMUR_VECTORS = [
    (b"", 0),
    (b"hello", 0x248BFA47),
    (b"The quick brown fox jumps over the lazy dog", 0x2E4FF723),
]


@pytest.mark.parametrize(("data", "expected"), MURMUR_VECTORS)
def test_murmur3_vectors_in_both_implementations(data: bytes, expected: int) -> None:
    assert murmur3_32(data) == expected
    assert hashing._murmur3_32_py(data) == expected


@given(st.binary(max_size=64))
def test_pure_python_murmur3_matches_mmh3(data: bytes) -> None:
    mmh3 = pytest.importorskip("mmh3")
    assert hashing._murmur3_32_py(data) == mmh3.hash(data, 0, signed=False)


def test_crc_vectors() -> None:
    assert crc16(b"123456789") == 0x31C3  # the cluster specification's check value
    assert crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize(
    ("key", "same_as"),
    [
        ("{user1000}.following", "user1000"),
        ("{user1000}.followers", "user1000"),
        ("foo{}{bar}", "foo{}{bar}"),  # empty first tag: the whole key
        ("foo{{bar}}zap", "{bar"),  # from the first { to the first } after it
        ("foo{bar}{zap}", "bar"),  # only the first tag
        ("{}", "{}"),
        ("no tags at all", "no tags at all"),
    ],
)
def test_hash_tags_follow_the_cluster_spec(key: str, same_as: str) -> None:
    assert slot(key) == crc16(same_as) % 16384


def test_slot_matches_the_server_for_known_keys() -> None:
    assert slot("foo") == 12182  # CLUSTER KEYSLOT foo
    assert slot(b"123456789") == 0x31C3 % 16384


KEYS = [f"key:{i}" for i in range(10_000)]
NAMES = ["127.0.0.1:7001/0", "127.0.0.1:7002/0", "127.0.0.1:7003/0"]


@pytest.mark.parametrize(
    "how", ["fnv1_32", "fnv1a_32", "murmur3_32", "crc32", "ketama", "rendezvous"]
)
def test_10000_keys_spread_within_10_percent_of_even(how: str) -> None:
    select = make_selector(how, NAMES)
    counts = Counter(select(key.encode()) for key in KEYS)
    even = len(KEYS) / len(NAMES)
    assert sorted(counts) == [0, 1, 2]
    assert all(abs(count - even) <= 0.10 * even for count in counts.values()), counts


def moved_share(how: str) -> float:
    before = make_selector(how, NAMES)
    after = make_selector(how, [*NAMES, "127.0.0.1:7004/0"])
    moved = sum(1 for key in KEYS if before(key.encode()) != after(key.encode()))
    return moved / len(KEYS)


@pytest.mark.parametrize("how", ["ketama", "rendezvous"])
def test_consistent_selectors_move_few_keys_when_a_server_joins(how: str) -> None:
    share = moved_share(how)
    assert share <= 0.35, share
    assert share >= 0.15  # about 1/4 must move to fill the new server


def test_modulo_hashing_moves_most_keys_when_a_server_joins() -> None:
    assert moved_share("fnv1a_32") >= 0.65


def test_consistent_selectors_depend_on_names_not_order() -> None:
    for cls in (Ketama, Rendezvous):
        forward, backward = cls(NAMES), cls(list(reversed(NAMES)))
        for key in KEYS[:500]:
            data = key.encode()
            assert NAMES[forward(data)] == list(reversed(NAMES))[backward(data)]


def test_unknown_hash_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown hash 'md6'"):
        make_selector("md6", NAMES)


def test_custom_hash_function_is_used_modulo_n() -> None:
    select = make_selector(len, NAMES)
    assert select(b"abcd") == 4 % 3
