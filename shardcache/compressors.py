"""Compressors, applied to serialized values above a size threshold. Each has a ``id``
(1-3; 0 means "not compressed") stored with the value, so changing the setting never makes
old entries unreadable."""

from __future__ import annotations

import importlib
import zlib
from types import ModuleType
from typing import ClassVar

from shardcache.errors import ConfigurationError, SerializationError

__all__ = ["COMPRESSORS", "Compressor", "Lz4Compressor", "ZlibCompressor", "ZstdCompressor"]


def _optional(module: str, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigurationError(
            f"this compressor needs {module}: pip install 'shardcache[{extra}]'"
        ) from None


class Compressor:
    id: ClassVar[int]

    def compress(self, data: bytes) -> bytes:
        raise NotImplementedError(f"{type(self).__name__}.compress")

    def decompress(self, data: bytes, max_size: int) -> bytes:
        """``data`` decompressed; `SerializationError` as soon as it would pass ``max_size``
        bytes (so a small bomb never becomes a large allocation)."""
        raise NotImplementedError(f"{type(self).__name__}.decompress")


def _too_large(max_size: int) -> SerializationError:
    return SerializationError(f"value too large: decompresses past max_value_size {max_size}")


class ZlibCompressor(Compressor):
    id = 1

    def __init__(self, level: int = 6) -> None:
        self.level = level

    def compress(self, data: bytes) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data: bytes, max_size: int) -> bytes:
        stream = zlib.decompressobj()
        out = stream.decompress(data, max_size + 1)
        if len(out) > max_size or stream.unconsumed_tail:
            raise _too_large(max_size)
        if not stream.eof:
            raise SerializationError("truncated zlib data")
        return out


class ZstdCompressor(Compressor):
    """Zstandard (the ``zstd`` extra): better ratio and much faster than zlib."""

    id = 2

    def __init__(self, level: int = 3) -> None:
        zstandard = _optional("zstandard", "zstd")
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)  # type: ignore[no-any-return]

    def decompress(self, data: bytes, max_size: int) -> bytes:
        # A stream read, so a frame header announcing a huge size allocates nothing.
        parts: list[bytes] = []
        size = 0
        with self._decompressor.stream_reader(data) as reader:
            while size <= max_size:
                part: bytes = reader.read(max_size + 1 - size)
                if not part:
                    break
                parts.append(part)
                size += len(part)
        if size > max_size:
            raise _too_large(max_size)
        return b"".join(parts)


class Lz4Compressor(Compressor):
    """LZ4 frames (the ``lz4`` extra): the fastest, with a lower ratio."""

    id = 3

    def __init__(self) -> None:
        self._frame = _optional("lz4.frame", "lz4")

    def compress(self, data: bytes) -> bytes:
        return self._frame.compress(data)  # type: ignore[no-any-return]

    def decompress(self, data: bytes, max_size: int) -> bytes:
        stream = self._frame.LZ4FrameDecompressor()
        out: bytes = stream.decompress(data, max_length=max_size + 1)
        if len(out) > max_size or not stream.eof:
            raise _too_large(max_size)
        return out


COMPRESSORS: dict[str, type[Compressor]] = {
    "zlib": ZlibCompressor,
    "zstd": ZstdCompressor,
    "lz4": Lz4Compressor,
}
