"""The JSON-lines format of ``keyshift state export`` and ``keyshift state import``.

One JSON object per line, UTF-8::

    {"key": "apple", "partition": 3, "value": 17}
    {"key_b64": "gAE=", "partition": 0, "value_b64": "MS4wZTM="}

* ``key``: the key's bytes as a string when they are UTF-8; otherwise
  ``key_b64``, the bytes in standard base64. Exactly one of the two.
* ``value``: the stored value, a JSON document (keyshift stores values as
  JSON). When re-encoding it would not give back the stored bytes exactly
  (``1e3`` stored, ``1000.0`` re-encoded), the line carries ``value_b64``, the
  stored bytes in base64, instead. Exactly one of the two. On import,
  ``"value": null`` deletes the key.
* ``partition``: the store partition (the task's input partition). Export
  always writes it; on import it is optional (see
  :func:`keyshift.orchestration.state_import.import_store`).

Export writes every line the way :func:`encode_entry` does, so export then
import gives back the same bytes for every key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from keyshift.errors import KeyshiftError, SerializationError
from keyshift.state.changelog import check_state_key


class LineError(KeyshiftError):
    """A line of an import file that breaks the format."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One key of a store: its bytes, its stored (JSON) value bytes (None: delete
    the key) and its partition (None: not given)."""

    key: bytes
    value: bytes | None
    partition: int | None = None


def encode_entry(entry: Entry) -> bytes:
    """The JSON line (without the newline) for ``entry`` (see the module docstring)."""
    out: dict[str, Any] = {}
    try:
        out["key"] = entry.key.decode("utf-8")
    except UnicodeDecodeError:
        out["key_b64"] = base64.b64encode(entry.key).decode("ascii")
    if entry.partition is not None:
        out["partition"] = entry.partition
    if entry.value is None:
        out["value"] = None
        return orjson.dumps(out)
    try:
        decoded = orjson.loads(entry.value)
        exact = decoded is not None and orjson.dumps(decoded) == entry.value
    except orjson.JSONDecodeError:
        exact = False
    if exact:
        out["value"] = decoded
    else:
        out["value_b64"] = base64.b64encode(entry.value).decode("ascii")
    return orjson.dumps(out)


_FIELDS = frozenset({"key", "key_b64", "value", "value_b64", "partition"})


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise LineError(f"{name}: expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LineError(f"{name}: not base64: {exc}") from None


def decode_entry(line: bytes) -> Entry:
    """The entry of one line (see the module docstring).

    Raises:
        LineError: the line is not a JSON object of that format, names an
            unknown field, gives a key or value twice or not at all, a
            ``partition`` that is not an integer >= 0, a ``value_b64`` that is
            not JSON, or the key reserved for changelog markers.
    """
    try:
        fields = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise LineError(f"not JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise LineError(f"expected a JSON object, got {type(fields).__name__}")
    unknown = sorted(set(fields) - _FIELDS)
    if unknown:
        raise LineError(f"unknown field(s): {', '.join(unknown)}")
    if ("key" in fields) == ("key_b64" in fields):
        raise LineError("expected exactly one of 'key' and 'key_b64'")
    if "key" in fields:
        if not isinstance(fields["key"], str):
            raise LineError(f"key: expected a string, got {type(fields['key']).__name__}")
        key = fields["key"].encode("utf-8")
    else:
        key = _b64(fields["key_b64"], "key_b64")
    try:
        check_state_key(key)
    except SerializationError as exc:
        raise LineError(str(exc)) from None
    if ("value" in fields) == ("value_b64" in fields):
        raise LineError("expected exactly one of 'value' and 'value_b64'")
    value: bytes | None
    if "value" in fields:
        value = None if fields["value"] is None else orjson.dumps(fields["value"])
    else:
        value = _b64(fields["value_b64"], "value_b64")
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            raise LineError("value_b64: the bytes are not a JSON document") from None
    partition = fields.get("partition")
    if partition is not None and (type(partition) is not int or partition < 0):
        raise LineError(f"partition: expected an integer >= 0, got {partition!r:.40}")
    return Entry(key, value, partition)
