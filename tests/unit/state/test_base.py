"""The state stamp: its encoding, and what a corrupt one raises."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyshift.errors import StateError
from keyshift.state.base import Stamp

pytestmark = pytest.mark.unit


offsets = st.integers(min_value=-1, max_value=2**62)
stamps = st.builds(
    Stamp,
    input_offset=offsets,
    changelog_offset=offsets,
    upstream=st.dictionaries(
        st.integers(min_value=0, max_value=2**31 - 1),
        st.tuples(offsets, st.integers(min_value=0, max_value=2**31 - 1)),
        max_size=8,
    ),
    epoch=st.integers(min_value=0, max_value=2**40),
)


@given(stamps)
def test_stamp_round_trip(value: Stamp) -> None:
    assert Stamp.decode(value.encode()) == value


def test_stamp_decode_defaults() -> None:
    assert Stamp.decode(b'{"in":5,"cl":6}') == Stamp(5, 6, {}, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"{}",
        b'{"in":1}',
        b'{"cl":1}',
        b"[1,2]",
        b"null",
        b"42",
        b'"text"',
        b'{"in":"x","cl":1}',
        b'{"in":null,"cl":1}',
        b'{"in":1,"cl":1,"up":{"x":[1,2]}}',
        b'{"in":1,"cl":1,"up":{"0":[1]}}',
        b'{"in":1,"cl":1,"up":{"0":5}}',
        b'{"in":1,"cl":1,"ep":"e"}',
        b'{"in":1e400,"cl":1}',
        b"\xff\xfe",
        # "up" of the wrong JSON type
        b'{"in":1,"cl":1,"up":[1]}',
        b'{"in":1,"cl":1,"up":null}',
        b'{"in":1,"cl":1,"up":"s"}',
    ],
)
def test_corrupt_stamp_raises_state_error(data: bytes) -> None:
    with pytest.raises(StateError, match="corrupt state stamp"):
        Stamp.decode(data)


@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_stamp_decode_never_raises_other_errors(data: bytes) -> None:
    try:
        Stamp.decode(data)
    except StateError:
        pass
