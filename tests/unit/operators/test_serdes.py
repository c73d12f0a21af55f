"""Unit tests of the built-in serdes and the serde registry."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshift import Serde, register_serde
from keyshift.errors import KeyshiftError, SerializationError
from keyshift.operators.serdes import BytesSerde, JsonSerde, StrSerde, get_serde

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5)
    ),
    max_leaves=20,
)


@given(json_values.filter(lambda v: v is not None))
def test_json_round_trip(value: Any) -> None:
    serde = get_serde("json")
    data = serde.serialize(value)
    assert isinstance(data, bytes)
    assert serde.deserialize(data) == value


@given(st.text())
def test_str_round_trip(value: str) -> None:
    serde = get_serde("str")
    data = serde.serialize(value)
    assert data == value.encode()
    assert serde.deserialize(data) == value


@given(st.binary())
def test_bytes_round_trip(value: bytes) -> None:
    serde = get_serde("bytes")
    assert serde.serialize(value) == value
    assert serde.deserialize(value) == value


@pytest.mark.parametrize("name", ["json", "str", "bytes"])
def test_none_is_tombstone(name: str) -> None:
    serde = get_serde(name)
    assert serde.serialize(None) is None
    assert serde.deserialize(None) is None


def test_json_null_bytes_decode_to_none() -> None:
    assert get_serde("json").deserialize(b"null") is None


def test_str_serializes_non_strings_with_str() -> None:
    assert get_serde("str").serialize(42) == b"42"


def test_bytes_accepts_bytearray_and_memoryview() -> None:
    serde = get_serde("bytes")
    assert serde.serialize(bytearray(b"ab")) == b"ab"
    assert serde.serialize(memoryview(b"cd")) == b"cd"


@pytest.mark.parametrize("data", [b"{", b"not json", b"", b'{"a":1}x', b"\xff\xfe"])
def test_json_invalid_raises(data: bytes) -> None:
    with pytest.raises(SerializationError, match="invalid JSON"):
        JsonSerde().deserialize(data)


@pytest.mark.parametrize(
    "value", [{1, 2}, object(), b"bytes", 2**64, {"a": {1, 2}}, {(1, 2): "tuple key"}, "\ud800"]
)
def test_json_unencodable_raises(value: Any) -> None:
    with pytest.raises(SerializationError, match="cannot encode"):
        JsonSerde().serialize(value)


@pytest.mark.parametrize("data", [b"\xff", b"\xc3\x28", b"ok\x80"])
def test_str_invalid_utf8_raises(data: bytes) -> None:
    with pytest.raises(SerializationError, match="invalid UTF-8"):
        StrSerde().deserialize(data)


def test_str_unencodable_raises() -> None:
    with pytest.raises(SerializationError):
        StrSerde().serialize("\ud800")


@pytest.mark.parametrize("value", ["text", 1, [1], {"a": 1}])
def test_bytes_rejects_non_bytes(value: Any) -> None:
    with pytest.raises(SerializationError, match="bytes serde needs bytes"):
        BytesSerde().serialize(value)


def test_serialization_error_is_keyshift_error() -> None:
    assert issubclass(SerializationError, KeyshiftError)


def test_builtins_are_serdes() -> None:
    for name in ("json", "str", "bytes"):
        assert isinstance(get_serde(name), Serde)


class Upper:
    def serialize(self, obj: Any) -> bytes | None:
        return None if obj is None else str(obj).upper().encode()

    def deserialize(self, data: bytes | None) -> Any:
        return None if data is None else data.decode().lower()


def test_register_and_get_custom_serde() -> None:
    serde = Upper()
    register_serde("test-upper", serde)
    assert get_serde("test-upper") is serde
    assert get_serde("test-upper").serialize("abc") == b"ABC"
    assert get_serde("test-upper").deserialize(b"ABC") == "abc"


def test_register_replaces_existing_name() -> None:
    first, second = Upper(), Upper()
    register_serde("test-replace", first)
    register_serde("test-replace", second)
    assert get_serde("test-replace") is second


def test_get_serde_passes_objects_through() -> None:
    serde = Upper()
    assert get_serde(serde) is serde


def test_register_rejects_non_serde() -> None:
    with pytest.raises(TypeError):
        register_serde("bad", object())  # type: ignore[arg-type]


def test_unknown_name() -> None:
    with pytest.raises(SerializationError, match=r"unknown serde 'nope' \(known: .*json"):
        get_serde("nope")


@pytest.mark.parametrize("spec", [42, None, object(), b"json"])
def test_non_serde_spec(spec: Any) -> None:
    with pytest.raises(SerializationError, match="is not a serde"):
        get_serde(spec)
