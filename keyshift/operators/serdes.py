"""Serializers for keys and values: ``json`` (default for values), ``str``, ``bytes``.

A custom serde is any object with ``serialize(obj) -> bytes | None`` and
``deserialize(data: bytes | None) -> object``; register it under a name with
:func:`register_serde` or pass the object directly.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import orjson

from keyshift.errors import SerializationError


@runtime_checkable
class Serde(Protocol):
    """Turns Python objects into bytes and back."""

    def serialize(self, obj: Any) -> bytes | None: ...

    def deserialize(self, data: bytes | None) -> Any: ...


class JsonSerde:
    """JSON via orjson. ``None`` <-> null record (tombstone)."""

    name = "json"

    def serialize(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        try:
            return orjson.dumps(obj)
        except TypeError as exc:
            raise SerializationError(f"cannot encode {type(obj).__name__} as JSON: {exc}") from exc

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise SerializationError(f"invalid JSON: {exc}") from exc


class StrSerde:
    """UTF-8 text."""

    name = "str"

    def serialize(self, obj: Any) -> bytes | None:
        if obj is None:
            return None
        try:
            return str(obj).encode()
        except UnicodeEncodeError as exc:
            raise SerializationError(f"cannot encode as UTF-8: {exc}") from exc

    def deserialize(self, data: bytes | None) -> Any:
        if data is None:
            return None
        try:
            return data.decode()
        except UnicodeDecodeError as exc:
            raise SerializationError(f"invalid UTF-8: {exc}") from exc


class BytesSerde:
    """Raw bytes, passed through."""

    name = "bytes"

    def serialize(self, obj: Any) -> bytes | None:
        if obj is None or isinstance(obj, bytes):
            return obj
        if isinstance(obj, bytearray | memoryview):
            return bytes(obj)
        raise SerializationError(f"bytes serde needs bytes, got {type(obj).__name__}")

    def deserialize(self, data: bytes | None) -> Any:
        return data


_REGISTRY: dict[str, Serde] = {"json": JsonSerde(), "str": StrSerde(), "bytes": BytesSerde()}


def register_serde(name: str, serde: Serde) -> None:
    """Make ``serde`` available by ``name`` wherever a serde is accepted."""
    if not isinstance(serde, Serde):
        raise TypeError("a serde needs serialize() and deserialize() methods")
    _REGISTRY[name] = serde


def get_serde(spec: str | Serde) -> Serde:
    """Resolve a serde name or object."""
    if isinstance(spec, str):
        try:
            return _REGISTRY[spec]
        except KeyError:
            known = ", ".join(sorted(_REGISTRY))
            raise SerializationError(f"unknown serde {spec!r} (known: {known})") from None
    if isinstance(spec, Serde):
        return spec
    raise SerializationError(f"{spec!r} is not a serde")
