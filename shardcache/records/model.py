"""Records, options, filters, and how a record is stored: what every record store shares.

A stored record is one JSON object whose head is written by the store at commit time, when
the version and the time are known (``{"v":<version>,"m":<ms>,``), followed by the rest,
built here (``"t":type,"i":id,"d":data...}``). Stores never parse the data: a Redis script
only glues the head to the rest, so JSON round trips in Lua cannot alter anyone's data.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shardcache.errors import ConfigurationError, InvalidRecordError, text_of

__all__ = ["Encryption", "Options", "Record", "RecordCodec", "compile_filter"]


@dataclass(frozen=True)
class Record:
    """One versioned record. ``data`` is a JSON-serializable dict, or bytes when ``binary``.
    ``version``, ``modified_at`` and ``deleted_at`` are set by the store; a record put with
    ``deleted=True`` is a deletion (a tombstone in the change log)."""

    type: str
    id: str
    data: Mapping[str, Any] | bytes = field(default_factory=dict)
    version: int = 0
    modified_at: datetime | None = None
    deleted_at: datetime | None = None
    binary: bool = False
    deleted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or not self.type:
            raise InvalidRecordError(f"a record type is a non-empty str, not {self.type!r}")
        if not isinstance(self.id, str) or not self.id:
            raise InvalidRecordError(f"a record id is a non-empty str, not {self.id!r}")
        if self.binary:
            if not isinstance(self.data, bytes):
                raise InvalidRecordError("binary=True needs bytes data")
        elif not isinstance(self.data, Mapping):
            raise InvalidRecordError(
                f"record data is a dict (or bytes with binary=True), not {type(self.data).__name__}"
            )

    @property
    def is_deleted(self) -> bool:
        return self.deleted or self.deleted_at is not None


@dataclass(frozen=True)
class Options:
    """Per-type options: ``capacity`` keeps at most that many current records (the oldest by
    version are deleted); ``ttl`` deletes records not modified for that many seconds."""

    capacity: int | None = None
    ttl: float | None = None

    def __post_init__(self) -> None:
        if self.capacity is not None and (not isinstance(self.capacity, int) or self.capacity < 0):
            raise InvalidRecordError(f"capacity is a count >= 0 or None, not {self.capacity!r}")
        if self.ttl is not None and not self.ttl > 0:
            raise InvalidRecordError(f"ttl is a number of seconds > 0 or None, not {self.ttl!r}")

    def encode(self) -> str:
        """``capacity|ttl_ms`` (empty fields for None): what the stores keep."""
        ttl = "" if self.ttl is None else str(int(self.ttl * 1000))
        return f"{'' if self.capacity is None else self.capacity}|{ttl}"

    @classmethod
    def decode(cls, text: str | bytes | None) -> Options:
        if not text:
            return cls()
        capacity, _, ttl = text_of(text).partition("|")
        return cls(int(capacity) if capacity else None, int(ttl) / 1000 if ttl else None)


class Encryption:
    """AES-GCM over ``data`` (type, id and versions stay plaintext, so sync works). ``keys``
    is a list of ``(key_id, key)`` with 16, 24 or 32-byte keys: new writes use the first,
    reads find any by its id, so keys rotate by putting a new one first. Type, id and
    version, length-prefixed, are the associated data: a ciphertext moved to another record,
    or an old one of the same record put back, does not decrypt."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError as exc:
            raise ConfigurationError(
                "record encryption needs cryptography: pip install 'shardcache[crypto]'"
            ) from exc
        if not keys:
            raise ConfigurationError("encryption needs at least one (key_id, key) pair")
        self._ciphers = {}
        for key_id, key in keys:
            if len(key) not in (16, 24, 32):
                raise ConfigurationError(f"key {key_id!r} must be 16, 24 or 32 bytes long")
            self._ciphers[key_id] = AESGCM(key)
        self._current = keys[0][0]

    def seal(self, plain: bytes, aad: bytes) -> dict[str, str]:
        nonce = os.urandom(12)
        sealed = self._ciphers[self._current].encrypt(nonce, plain, aad)
        return {"k": self._current, "n": _b64(nonce), "c": _b64(sealed)}

    def open(self, box: Mapping[str, str], aad: bytes) -> bytes:
        from cryptography.exceptions import InvalidTag

        cipher = self._ciphers.get(box["k"])
        if cipher is None:
            raise InvalidRecordError(f"record encrypted with unknown key id {box['k']!r}")
        try:
            return cipher.decrypt(base64.b64decode(box["n"]), base64.b64decode(box["c"]), aad)
        except InvalidTag:
            raise InvalidRecordError("record data failed authentication") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class RecordCodec:
    """Records to the stored JSON text and back, encrypting ``data`` when configured."""

    def __init__(self, encryption: Encryption | None = None) -> None:
        self.encryption = encryption

    def rest(self, record: Record, *, deleted: bool = False, version: int | None = None) -> str:
        """The stored form after the store's head: everything but version and time. With
        encryption, the ``version`` the store will give the record is sealed in too."""
        body: dict[str, Any] = {"t": record.type, "i": record.id}
        if deleted:
            body["x"] = 1
        else:
            if record.binary:
                plain = bytes(record.data)  # type: ignore[arg-type]
            else:
                try:
                    plain = json.dumps(record.data, separators=(",", ":")).encode()
                except (TypeError, ValueError) as exc:
                    raise InvalidRecordError(f"record data is not JSON: {exc}") from exc
            if self.encryption is not None:
                if version is None:
                    raise InvalidRecordError("an encrypted record is sealed with its version")
                body["e"] = self.encryption.seal(plain, _aad(record.type, record.id, version))
            elif record.binary:
                body["b"] = _b64(plain)
            else:
                body["d"] = record.data
            if record.binary:
                body["bin"] = 1
        return json.dumps(body, separators=(",", ":"))[1:]

    def decode(self, stored: str | bytes) -> Record:
        raw = json.loads(stored)
        at = datetime.fromtimestamp(raw["m"] / 1000, tz=timezone.utc)
        binary = bool(raw.get("bin"))
        data: Any = {}
        if "e" in raw:
            if self.encryption is None:
                raise InvalidRecordError("record is encrypted and the store has no keys")
            plain = self.encryption.open(raw["e"], _aad(raw["t"], raw["i"], raw["v"]))
            data = plain if binary else json.loads(plain)
        elif "b" in raw:
            data = base64.b64decode(raw["b"])
        elif "d" in raw:
            data = raw["d"]
        elif binary:
            data = b""
        return Record(
            type=raw["t"],
            id=raw["i"],
            data=data,
            version=raw["v"],
            modified_at=at,
            deleted_at=at if raw.get("x") else None,
            binary=binary,
        )


def head(version: int, ms: int) -> str:
    """What a store writes before `RecordCodec.rest` (also in the Redis scripts)."""
    return f'{{"v":{version},"m":{ms},'


def _aad(record_type: str, record_id: str, version: int) -> bytes:
    parts = [record_type.encode(), record_id.encode()]
    prefixed = b"".join(len(part).to_bytes(4, "big") + part for part in parts)
    return prefixed + int(version).to_bytes(8, "big")


# --- filters ---------------------------------------------------------------------------------

Predicate = Callable[[Record], bool]


def compile_filter(spec: Mapping[str, Any] | None) -> Predicate:
    """A predicate from a filter: ``{"id": "a"}``, ``{"field": value}`` (equality on a
    top-level data field), ``{"field": {"$eq": v}}``, ``{"field": {"$in": [..]}}``,
    ``{"$and": [...]}``, ``{"$or": [...]}``; several entries in one dict must all match."""
    if spec is None:
        return lambda record: True
    if not isinstance(spec, Mapping):
        raise InvalidRecordError(f"a filter is a dict, not {type(spec).__name__}")
    parts = [_compile_entry(name, value) for name, value in spec.items()]
    return lambda record: all(part(record) for part in parts)


def _compile_entry(name: str, value: Any) -> Predicate:
    if name in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise InvalidRecordError(f"{name} takes a non-empty list of filters")
        subs = [compile_filter(sub) for sub in value]
        if name == "$and":
            return lambda record: all(sub(record) for sub in subs)
        return lambda record: any(sub(record) for sub in subs)
    if name.startswith("$"):
        raise InvalidRecordError(f"unknown filter operator {name!r}: $and, $or, $eq, $in")
    get = _getter(name)
    if isinstance(value, Mapping):
        if len(value) != 1:
            raise InvalidRecordError(f"filter on {name!r}: one operator, $eq or $in")
        ((op, operand),) = value.items()
        if op == "$eq":
            return lambda record: get(record) == operand
        if op == "$in":
            if not isinstance(operand, list):
                raise InvalidRecordError(f"$in on {name!r} takes a list")
            return lambda record: get(record) in operand
        raise InvalidRecordError(f"unknown filter operator {op!r} on {name!r}: $eq or $in")
    return lambda record: get(record) == value


_ABSENT = object()


def _getter(name: str) -> Callable[[Record], Any]:
    if name == "id":
        return lambda record: record.id
    return lambda record: (
        record.data.get(name, _ABSENT) if isinstance(record.data, Mapping) else _ABSENT
    )
