"""Serializers: Python values to bytes and back. Each has a one-byte ``id`` that the cache
stores with the value, so a reader knows which serializer wrote it."""

from __future__ import annotations

import functools
import json
import pickle
from typing import Any, ClassVar

from shardcache.errors import ConfigurationError

__all__ = ["SERIALIZERS", "JSONSerializer", "MsgpackSerializer", "PickleSerializer", "Serializer"]


class Serializer:
    """Turns values into bytes and back. ``loads`` may raise anything on bad input: the
    cache layer turns that into a miss and a warning.

    Ids 0-2 are the built-ins; a custom serializer keeps id 3 ("other").
    """

    id: ClassVar[int] = 3

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError(f"{type(self).__name__}.dumps")

    def loads(self, data: bytes) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.loads")


class PickleSerializer(Serializer):
    """pickle at the highest protocol: any Python value. Only safe to read what you wrote:
    sign values (``signing_secret``) if others can write to the servers."""

    id = 0

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self.protocol = protocol
        # The C functions themselves, not Python methods around them: one frame less on
        # every value of a get_many.
        self.dumps = functools.partial(pickle.dumps, protocol=protocol)  # type: ignore[method-assign]
        self.loads = pickle.loads  # type: ignore[method-assign, assignment]


class JSONSerializer(Serializer):
    """Compact UTF-8 JSON: readable by any language; tuples come back as lists."""

    id = 1

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class MsgpackSerializer(Serializer):
    """MessagePack (the ``msgpack`` extra): compact, fast, cross-language; bytes stay bytes."""

    id = 2

    def __init__(self) -> None:
        try:
            import msgpack
        except ImportError:
            raise ConfigurationError(
                "the msgpack serializer needs msgpack: pip install 'shardcache[msgpack]'"
            ) from None
        self._msgpack = msgpack

    def dumps(self, value: Any) -> bytes:
        return self._msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> Any:
        return self._msgpack.unpackb(data, raw=False)


SERIALIZERS: dict[str, type[Serializer]] = {
    "pickle": PickleSerializer,
    "json": JSONSerializer,
    "msgpack": MsgpackSerializer,
}
