"""shardcache.codec: integers, headers, compression and signatures (no server needed)."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardcache.codec import Codec
from shardcache.compressors import Lz4Compressor, ZlibCompressor, ZstdCompressor
from shardcache.errors import ConfigurationError, SerializationError
from shardcache.serializers import JSONSerializer, MsgpackSerializer, PickleSerializer

SECRET = "a secret of at least sixteen bytes"
KEY = b"k"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text()
    | st.integers(-(2**63), 2**63 - 1),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_every_serializer_round_trips(value: Any) -> None:
    for serializer in (PickleSerializer(), JSONSerializer(), MsgpackSerializer()):
        codec = Codec(serializer, compressor=ZlibCompressor(), compress_threshold=8)
        assert codec.decode(codec.encode(value, KEY), KEY) == value


def test_integers_are_stored_as_plain_digits_and_bools_are_not() -> None:
    codec = Codec(PickleSerializer())
    assert codec.encode(42, KEY) == b"42"
    assert codec.encode(-7, KEY) == b"-7"
    assert codec.decode(b"-7", KEY) == -7
    assert codec.encode(True, KEY) != b"1"
    assert codec.decode(codec.encode(True, KEY), KEY) is True


@pytest.mark.parametrize("compressor", [ZlibCompressor, ZstdCompressor, Lz4Compressor])
def test_compression_applies_above_threshold_and_is_read_back_by_any_setting(
    compressor: type,
) -> None:
    writer = Codec(PickleSerializer(), compressor=compressor(), compress_threshold=100)
    small, large = "x" * 10, "x" * 10_000
    assert writer.encode(small, KEY) == Codec(PickleSerializer()).encode(small, KEY)
    packed = writer.encode(large, KEY)
    assert len(packed) < 1000
    for reader in (
        Codec(PickleSerializer()),
        Codec(PickleSerializer(), compressor=ZlibCompressor()),
    ):
        assert reader.decode(packed, KEY) == large  # settings changed: old entries still read


def test_corrupt_bytes_raise_serialization_error() -> None:
    codec = Codec(PickleSerializer())
    for garbage in (b"", b"hello", b"\xa0not a pickle", b"12abc", b"\xa1\x00\x01"):
        with pytest.raises(SerializationError):
            codec.decode(garbage, KEY)


def test_signed_values_reject_tampering_replay_and_unsigned_data() -> None:
    signer = Codec(PickleSerializer(), signing_secret=SECRET)
    stored = signer.encode({"admin": False}, KEY)
    assert signer.decode(stored, KEY) == {"admin": False}
    tampered = stored[:-2] + bytes([stored[-2] ^ 1]) + stored[-1:]
    with pytest.raises(SerializationError, match="signature"):
        signer.decode(tampered, KEY)
    with pytest.raises(SerializationError, match="signature"):
        signer.decode(stored, b"another key")  # replayed under another key
    evil = b"\xa0" + pickle.dumps({"admin": True})  # unsigned: never unpickled
    with pytest.raises(SerializationError, match="unsigned"):
        signer.decode(evil, KEY)


def test_value_from_another_serializer_is_refused_not_misread() -> None:
    stored = Codec(PickleSerializer()).encode(["x"], KEY)
    with pytest.raises(SerializationError, match="another serializer"):
        Codec(JSONSerializer()).decode(stored, KEY)


def test_unserializable_value_is_a_serialization_error() -> None:
    with pytest.raises(SerializationError, match="cannot serialize"):
        Codec(JSONSerializer()).encode(object(), KEY)


def test_short_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="16 bytes"):
        Codec(PickleSerializer(), signing_secret="short")
