"""The JSON-lines format of ``keyshift state export/import``: arbitrary key and
value bytes round-trip exactly, and malformed lines are refused."""

from __future__ import annotations

import base64
import random

import orjson
import pytest

from keyshift.orchestration.state_lines import Entry, LineError, decode_entry, encode_entry
from keyshift.state.changelog import MARKER_KEY

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "entry",
    [
        Entry(b"apple", b"17", 3),
        Entry(b"", b'{"a":[1,2.5,"x"],"b":null}', 0),
        Entry("é ☃ 𝄞".encode(), b'"caf\\u00e9"', 1),  # escaped form: kept as bytes
        Entry(b"\xff\xfe\x00bin", b"1e3", 2),  # not UTF-8; JSON that re-encodes otherwise
        Entry(b"k", b"not json", None),
        Entry(b"k", b"null", 0),  # a stored JSON null is not a deletion
        Entry(b"k", b"  42 ", 0),  # whitespace around the document
        Entry(b"k", b"18446744073709551616", 0),  # beyond 64 bits
        Entry(b"del", None, 4),
    ],
)
def test_round_trip(entry: Entry) -> None:
    line = encode_entry(entry)
    assert b"\n" not in line
    if entry.value is not None and entry.value.startswith(b"not"):
        # A value that is not JSON is written (export reads whatever Redis holds)
        # but refused on import: the workers decode every value as JSON.
        with pytest.raises(LineError, match="not a JSON document"):
            decode_entry(line)
        return
    assert decode_entry(line) == entry


def test_round_trip_of_random_bytes() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        key = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        if key == MARKER_KEY:
            continue
        value = orjson.dumps(rng.choice([rng.random(), rng.randrange(-(2**63), 2**63), key.hex()]))
        entry = Entry(key, value, rng.randrange(8))
        assert decode_entry(encode_entry(entry)) == entry


def test_readable_forms_are_used_when_exact() -> None:
    line = orjson.loads(encode_entry(Entry(b"apple", b'{"n":1}', 3)))
    assert line == {"key": "apple", "partition": 3, "value": {"n": 1}}
    line = orjson.loads(encode_entry(Entry(b"\xff", b"1.0e3", 0)))
    assert line == {
        "key_b64": base64.b64encode(b"\xff").decode(),
        "partition": 0,
        "value_b64": base64.b64encode(b"1.0e3").decode(),
    }


def test_hand_written_lines() -> None:
    assert decode_entry(b'{"key": "a", "value": 5}') == Entry(b"a", b"5", None)
    assert decode_entry(b'{"key": "a", "value": {"x": [1]}}') == Entry(b"a", b'{"x":[1]}', None)
    assert decode_entry(b'{"key": "a", "value": null, "partition": 2}') == Entry(b"a", None, 2)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{", "not JSON"),
        (b"[1]", "JSON object"),
        (b'{"value": 1}', "exactly one of 'key' and 'key_b64'"),
        (b'{"key": "a", "key_b64": "YQ==", "value": 1}', "exactly one of 'key'"),
        (b'{"key": 1, "value": 1}', "key: expected a string"),
        (b'{"key": "a"}', "exactly one of 'value' and 'value_b64'"),
        (b'{"key": "a", "value": 1, "value_b64": "MQ=="}', "exactly one of 'value'"),
        (b'{"key_b64": "%%", "value": 1}', "not base64"),
        (b'{"key": "a", "value_b64": 5}', "base64 string"),
        (b'{"key": "a", "value": 1, "partition": -1}', "partition"),
        (b'{"key": "a", "value": 1, "partition": true}', "partition"),
        (b'{"key": "a", "value": 1, "partition": 1.0}', "partition"),
        (b'{"key": "a", "value": 1, "extra": 1}', "unknown field"),
        (b'{"key": "\\u0000keyshift.stamp", "value": 1}', "reserved"),
    ],
)
def test_malformed_lines_are_refused(line: bytes, message: str) -> None:
    with pytest.raises(LineError, match=message):
        decode_entry(line)
