"""Items, shard states and response objects of the sharded memcache client (godropbox's
``memcache`` package, in Python)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from shardcache.errors import InvalidKeyError, key_text

__all__ = [
    "NO_EXPIRATION_INCR",
    "CountResponse",
    "GetResponse",
    "Item",
    "MemcachedState",
    "MutateResponse",
    "ShardState",
    "StatResponse",
    "Status",
    "VersionResponse",
    "validate_key",
]

NO_EXPIRATION_INCR = 0xFFFFFFFF
"""``increment(..., expiration=NO_EXPIRATION_INCR)``: fail on a missing key, do not create it."""

MAX_KEY_LENGTH = 250
_BAD_KEY_BYTES = bytes([*range(0x21), 0x7F])


class Status(enum.IntEnum):
    """Response status codes (memcached's binary protocol numbers, as the Go client uses)."""

    NO_ERROR = 0x0000
    KEY_NOT_FOUND = 0x0001
    KEY_EXISTS = 0x0002
    VALUE_TOO_LARGE = 0x0003
    INVALID_ARGUMENTS = 0x0004
    ITEM_NOT_STORED = 0x0005
    INCR_DECR_ON_NON_NUMERIC_VALUE = 0x0006
    UNKNOWN_COMMAND = 0x0081
    OUT_OF_MEMORY = 0x0082
    CONNECTION_UNAVAILABLE = 0x1000  # ours: the shard could not be reached (see ``error``)
    UNMAPPED_KEY = 0x1001  # ours: the shard function mapped the key to no shard


class MemcachedState(enum.Enum):
    """What a shard is used for (DESIGN.md section 3): see the operation x state table."""

    ACTIVE = "ACTIVE"
    WRITE_ONLY = "WRITE_ONLY"
    WARM_UP = "WARM_UP"
    DOWN = "DOWN"


@dataclass(frozen=True)
class ShardState:
    """One shard of the list: its ``address`` (``host:port``), its state, and for WARM_UP
    optionally the ``warm_source`` address whose values are read through."""

    address: str
    state: MemcachedState = MemcachedState.ACTIVE
    warm_source: str | None = None


@dataclass
class Item:
    """A value to store: ``cas`` non-zero makes a set conditional (``data_version_id``)."""

    key: bytes | str
    value: bytes = b""
    flags: int = 0
    cas: int = 0
    expiration: int = 0


@dataclass(slots=True)  # made by the hundred per call: slots, no frozen-init cost
class GetResponse:
    key: bytes
    status: Status = Status.KEY_NOT_FOUND
    value: bytes | None = None
    flags: int = 0
    cas: int = 0
    error: Exception | None = None

    @property
    def found(self) -> bool:
        """A hit (a miss is ``KEY_NOT_FOUND`` and no error)."""
        return self.status is Status.NO_ERROR


@dataclass(slots=True)  # made by the hundred per call: slots, no frozen-init cost
class MutateResponse:
    key: bytes
    status: Status = Status.NO_ERROR
    cas: int = 0
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.status is Status.NO_ERROR


@dataclass(slots=True)  # made by the hundred per call: slots, no frozen-init cost
class CountResponse:
    key: bytes
    status: Status = Status.NO_ERROR
    count: int = 0
    error: Exception | None = None


@dataclass(frozen=True)
class StatResponse:
    """Per-shard statistics (``{shard id: {name: value}}``) and per-shard errors."""

    entries: dict[int, dict[str, str]] = field(default_factory=dict)
    errors: dict[int, Exception] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionResponse:
    versions: dict[int, str] = field(default_factory=dict)
    errors: dict[int, Exception] = field(default_factory=dict)


def validate_key(key: bytes | str) -> bytes:
    """The key as bytes, or `InvalidKeyError` (a ``ValueError``) if memcached would refuse it
    or could be fooled by it: empty, longer than 250 bytes, or holding a byte outside
    0x21-0x7E / 0x80-0xFF (a space, CR, LF or another control character would end the key
    and start a command of the attacker's on the text protocol)."""
    data = key.encode() if isinstance(key, str) else key
    if not isinstance(data, bytes):
        raise InvalidKeyError(f"Invalid key {key_text(key)}: not bytes or str")
    if not data:
        raise InvalidKeyError("Invalid key: empty")
    if len(data) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"Invalid key {key_text(data)}: more than 250 bytes")
    if len(data.translate(None, _BAD_KEY_BYTES)) != len(data):
        raise InvalidKeyError(f"Invalid key {key_text(data)}: space or control character")
    return data
