"""The pure parts of ``keyshift reset``: the offsets file, dates, the Redis pattern."""

from __future__ import annotations

import pytest

from keyshift.errors import KeyshiftError
from keyshift.orchestration.reset import (
    OffsetsFileError,
    parse_datetime,
    parse_offsets,
    redis_pattern,
)

pytestmark = pytest.mark.unit


def test_offsets_file() -> None:
    text = """
    # topic,partition,offset
    sentences,0,10
     sentences , 1 , 0

    other.topic-x,12,99999999999
    """
    assert parse_offsets(text) == {
        ("sentences", 0): 10,
        ("sentences", 1): 0,
        ("other.topic-x", 12): 99999999999,
    }
    assert parse_offsets("") == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sentences,0", "line 1: expected topic,partition,offset"),
        ("sentences,0,1,2", "expected topic,partition,offset"),
        (",0,1", "expected topic,partition,offset"),
        ("ok,0,1\nsentences,x,1", "line 2: partition and offset must be integers"),
        ("sentences,0,-1", "negative"),
        ("sentences,-1,0", "negative"),
        ("s,0,1\ns,0,2", "line 2: s\\[0\\] is named twice"),
    ],
)
def test_bad_offsets_files(text: str, message: str) -> None:
    with pytest.raises(OffsetsFileError, match=message):
        parse_offsets(text)


def test_datetimes() -> None:
    assert parse_datetime("1970-01-01T00:00:01Z") == 1000
    assert parse_datetime("1970-01-01T00:00:01") == 1000  # UTC without an offset
    assert parse_datetime("1970-01-01T01:00:01+01:00") == 1000
    assert parse_datetime("2026-12-01") == 1_796_083_200_000
    assert parse_datetime(" 2026-12-01T06:00:00.250Z ") == 1_796_104_800_250
    with pytest.raises(KeyshiftError, match="ISO 8601"):
        parse_datetime("yesterday")


def test_redis_pattern_matches_only_the_app() -> None:
    assert redis_pattern("wordcount") == "ks:{wordcount:*"
    assert redis_pattern("a.b-c_1") == "ks:{a.b-c_1:*"
    for bad in ("", "a*", "a:b", "a[b]", "a?"):
        with pytest.raises(KeyshiftError):
            redis_pattern(bad)
