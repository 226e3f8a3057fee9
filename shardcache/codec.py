"""How a value is stored: plain integers, or a one-byte header and a serialized payload.

Unsigned, integers (``type(v) is int``) are stored as their decimal digits so that INCR/DECR
work on them and ``get`` returns an int. Everything else is::

    header (1 byte) [HMAC-SHA256 (32 bytes), when signed] payload

The header is ``0b101S_SSCC``-shaped: ``0xA0`` tags it (never an ASCII digit or ``-``, so never
mistaken for an integer), bit 4 says "signed", bits 2-3 name the serializer and bits 0-1 the
compressor (0 = none). A reader therefore decompresses whatever the writer chose, so the
compression settings can change at any time.

Signed (``signing_secret``), every value carries the signature, integers included: a signed
cache never returns bytes that someone without the secret wrote, and ``incr`` works by
compare-and-set (`shardcache.cache`). The HMAC covers the length-prefixed key, then the header
and payload, so a value cannot be replayed under another key. Several secrets may be given:
the first signs, every one verifies, so a secret can be rotated without emptying the cache.

Decompressed payloads and serialized values are bounded by ``max_value_size``: a stored value
past it (a compression bomb) is unreadable, not a 600 MB allocation.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Any

from shardcache.compressors import COMPRESSORS, Compressor, ZlibCompressor
from shardcache.errors import ConfigurationError, SerializationError
from shardcache.serializers import Serializer

__all__ = ["MAX_VALUE_SIZE", "MISSING", "Codec"]

MAX_VALUE_SIZE = 64 * 1024 * 1024
"""The default bound on a value's serialized (and decompressed) size: 64 MiB."""

Secret = str | bytes

MISSING: Any = object()
"""Stands for "no value" in `Codec.decode_batch` results: the key was absent or unreadable."""

TAG = 0xA0
TAG_MASK = 0xE0
SIGNED = 0x10
SIGNATURE_SIZE = 32
_DIGIT_START = frozenset(b"-0123456789")


class Codec:
    """Encodes values for storage and decodes stored bytes; see the module docstring."""

    def __init__(
        self,
        serializer: Serializer,
        *,
        compressor: Compressor | None = None,
        compress_threshold: int = 1024,
        signing_secret: Secret | Sequence[Secret] | None = None,
        max_value_size: int = MAX_VALUE_SIZE,
    ) -> None:
        if compress_threshold < 0:
            raise ConfigurationError("compress_threshold must be >= 0")
        if max_value_size < 1:
            raise ConfigurationError("max_value_size must be at least 1 byte")
        secrets = _secrets(signing_secret)
        self.serializer = serializer
        self.compressor = compressor
        self.compress_threshold = compress_threshold
        self.max_value_size = max_value_size
        self._secret = secrets[0] if secrets else None
        self._secrets = secrets
        self.signed = bool(secrets)
        self._header_base = TAG | (SIGNED if secrets else 0) | (serializer.id << 2)
        # What most stored values start with: our serializer, unsigned, not compressed.
        self._plain_header = -1 if secrets else TAG | (serializer.id << 2)
        self._loads = serializer.loads
        self._decompressors: dict[int, Compressor] = {ZlibCompressor.id: ZlibCompressor()}
        if compressor is not None:
            self._decompressors[compressor.id] = compressor

    def encode(self, value: Any, key: bytes) -> bytes:
        if type(value) is int and self._secret is None:
            return b"%d" % value
        try:
            payload = self.serializer.dumps(value)
        except Exception as exc:
            raise SerializationError(f"cannot serialize {type(value).__name__}: {exc}") from exc
        if len(payload) > self.max_value_size:
            raise SerializationError(
                f"value too large: {len(payload)} bytes serialized, "
                f"max_value_size is {self.max_value_size}"
            )
        header = self._header_base
        compressor = self.compressor
        if compressor is not None and len(payload) >= self.compress_threshold:
            packed = compressor.compress(payload)
            if len(packed) < len(payload):
                payload = packed
                header |= compressor.id
        head = bytes((header,))
        if self._secret is None:
            return head + payload
        return head + self._sign(key, head, payload) + payload

    def decode(self, data: bytes, key: bytes) -> Any:
        """The stored value; `SerializationError` if the bytes are not a value we can trust."""
        if data and data[0] == self._plain_header:
            try:
                return self._loads(data[1:])
            except Exception as exc:
                raise SerializationError(f"cannot decode: {exc!r}") from exc
        return self._decode_other(data, key)

    def decode_batch(
        self,
        raws: Sequence[bytes | None],
        keys: Sequence[bytes],
        on_error: Callable[[bytes, SerializationError], None],
    ) -> list[Any]:
        """`decode` for many values (``None`` for absent keys), in one tight loop: `MISSING`
        stands for an absent or unreadable value, and ``on_error`` hears of the latter."""
        plain, loads, decode_other = self._plain_header, self._loads, self._decode_other
        try:  # the common case, every value readable, in one comprehension
            return [
                MISSING
                if raw is None
                else loads(raw[1:])
                if raw[0] == plain
                else decode_other(raw, key)
                for raw, key in zip(raws, keys, strict=True)
            ]
        except Exception:  # an unreadable value: all again, one by one, below
            pass
        values: list[Any] = []
        append = values.append
        for raw, key in zip(raws, keys, strict=True):
            if raw is None:
                append(MISSING)
                continue
            try:
                append(loads(raw[1:]) if raw and raw[0] == plain else decode_other(raw, key))
            except SerializationError as exc:
                on_error(key, exc)
                append(MISSING)
            except Exception as exc:
                on_error(key, SerializationError(f"cannot decode: {exc!r}"))
                append(MISSING)
        return values

    def _decode_other(self, data: bytes, key: bytes) -> Any:
        if not data:
            raise SerializationError("empty value")
        header = data[0]
        if header & TAG_MASK != TAG:
            if header in _DIGIT_START:
                if self._secret is not None:
                    raise SerializationError("unsigned value where signed values are required")
                try:
                    return int(data)
                except ValueError:
                    pass
            raise SerializationError("not a value written by shardcache")
        body = data[1:]
        if header & SIGNED:
            signature, body = body[:SIGNATURE_SIZE], body[SIGNATURE_SIZE:]
            if self._secret is not None and not self._verify(signature, key, data[:1], body):
                raise SerializationError("signature mismatch: value tampered with or foreign")
        elif self._secret is not None:
            raise SerializationError("unsigned value where signed values are required")
        if (header >> 2) & 0x3 != self.serializer.id:
            raise SerializationError(f"written by another serializer (id {(header >> 2) & 0x3})")
        try:
            if header & 0x3:
                body = self._decompressor(header & 0x3).decompress(body, self.max_value_size)
            return self._loads(body)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(f"cannot decode: {exc!r}") from exc

    def _sign(self, key: bytes, head: bytes, payload: bytes, secret: bytes | None = None) -> bytes:
        # Length-prefixed key, so no (key, value) pair signs the same bytes as another.
        message = len(key).to_bytes(4, "big") + key + head + payload
        return hmac.new(secret or self._secret or b"", message, hashlib.sha256).digest()

    def _verify(self, signature: bytes, key: bytes, head: bytes, payload: bytes) -> bool:
        return any(
            hmac.compare_digest(signature, self._sign(key, head, payload, secret))
            for secret in self._secrets
        )

    def _decompressor(self, compressor_id: int) -> Compressor:
        found = self._decompressors.get(compressor_id)
        if found is None:
            for cls in COMPRESSORS.values():
                if cls.id == compressor_id:
                    try:
                        found = self._decompressors[compressor_id] = cls()
                    except ConfigurationError as exc:
                        raise SerializationError(str(exc)) from exc
        if found is None:
            raise SerializationError(f"unknown compressor id {compressor_id}")
        return found


def _secrets(given: Secret | Sequence[Secret] | None) -> list[bytes]:
    """``signing_secret`` as a list of bytes, newest first (each 16 bytes at least)."""
    if given is None:
        return []
    listed = [given] if isinstance(given, str | bytes) else list(given)
    secrets = [s.encode() if isinstance(s, str) else bytes(s) for s in listed]
    if not secrets or any(len(s) < 16 for s in secrets):
        raise ConfigurationError(
            "signing_secret must be at least 16 bytes long (each one, when several are given)"
        )
    return secrets
