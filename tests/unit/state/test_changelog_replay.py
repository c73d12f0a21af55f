"""Which changelog records a replay applies: markers, forged markers, orphans."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Message

from keyshift.errors import SerializationError
from keyshift.migrations.replay import ChangelogApplier
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_HEADERS, MARKER_KEY, check_state_key
from keyshift.state.memory.store import MemoryPartition
from keyshift.state.table import Table

pytestmark = pytest.mark.unit


class Log:
    """A changelog partition being written, for the applier to read."""

    def __init__(self) -> None:
        self.msgs: list[Message] = []

    def data(self, key: bytes, value: int | None) -> Log:
        raw = None if value is None else orjson.dumps(value)
        self.msgs.append(
            Message(topic="cl", partition=0, offset=len(self.msgs), key=key, value=raw)
        )
        return self

    def marker(
        self,
        input_offset: int,
        *,
        first: int = -1,
        epoch: int = 1,
        headers: bool = True,
        value: bytes | None = None,
    ) -> Log:
        raw = (
            value
            if value is not None
            else Stamp(input_offset, 0, epoch=epoch, first_offset=first).encode()
        )
        self.msgs.append(
            Message(
                topic="cl",
                partition=0,
                offset=len(self.msgs),
                key=MARKER_KEY,
                value=raw,
                headers=list(MARKER_HEADERS) if headers else None,
            )
        )
        return self

    @property
    def end(self) -> int:
        return len(self.msgs)

    def replay(self) -> tuple[dict[bytes, int], ChangelogApplier, frozenset[bytes]]:
        backend = MemoryPartition()
        applier = ChangelogApplier(backend, None, backend.claim("me"))
        for msg in self.msgs:
            applier.feed(msg)
        orphans, _ = applier.finish()
        return {k: orjson.loads(v) for k, v in backend.data.items()}, applier, orphans


def test_records_apply_only_up_to_the_last_marker() -> None:
    log = Log().data(b"a", 1).marker(1).data(b"b", 1)
    state, applier, orphans = log.replay()
    assert state == {b"a": 1}
    assert applier.stamp is not None and applier.stamp.input_offset == 1
    assert orphans == {b"b"}


def test_records_of_a_commit_whose_marker_never_landed_are_not_applied_later() -> None:
    log = Log().data(b"a", 1).marker(1, first=0)
    log.data(b"a", 2).data(b"orphan", 5)  # a commit cut short: no marker
    first = log.end
    log.data(b"a", 2).marker(2, first=first)  # the next owner's commit
    state, _, orphans = log.replay()
    assert state == {b"a": 2}
    assert orphans == {b"a", b"orphan"}


def test_records_before_the_first_marker_seen_are_applied_as_compaction_leaves_them() -> None:
    # Compaction removed the markers before the last one: every record left
    # belongs to some commit, even below the last marker's first offset.
    log = Log().data(b"a", 1).data(b"b", 3)
    first = log.end
    log.data(b"c", 1).marker(3, first=first)
    state, _, orphans = log.replay()
    assert state == {b"a": 1, b"b": 3, b"c": 1}
    assert orphans == frozenset()


def test_a_record_with_the_marker_key_but_no_header_is_not_a_marker_after_real_ones() -> None:
    forged = Stamp(10**9, 0, epoch=10**6).encode()
    log = Log().data(b"a", 1).marker(1).data(b"b", 1).marker(2, headers=False, value=forged)
    state, applier, _ = log.replay()
    assert state == {b"a": 1}
    assert applier.stamp is not None and applier.stamp.input_offset == 1
    assert applier.skipped_markers == 1


def test_changelogs_written_before_marker_headers_stay_readable() -> None:
    log = Log().data(b"a", 1).marker(1, headers=False).data(b"a", 2).marker(2, headers=False)
    state, applier, _ = log.replay()
    assert state == {b"a": 2}
    assert applier.stamp is not None and applier.stamp.input_offset == 2


def test_a_garbage_legacy_marker_is_skipped_not_fatal() -> None:
    # What an input word equal to the marker key left in a count's changelog.
    log = Log().data(b"a", 1).marker(1, headers=False).marker(0, headers=False, value=b"1")
    log.data(b"a", 2).marker(2, headers=False)
    state, applier, _ = log.replay()
    assert state == {b"a": 2} and applier.skipped_markers == 1


def test_a_zombies_late_commit_is_not_applied() -> None:
    log = Log().data(b"a", 1).marker(1, epoch=2).data(b"a", 9).marker(5, epoch=1)
    state, applier, orphans = log.replay()
    assert state == {b"a": 1} and b"a" in orphans
    assert applier.stamp is not None and applier.stamp.epoch == 2


def test_the_marker_key_is_refused_as_a_state_key() -> None:
    with pytest.raises(SerializationError, match="reserved"):
        check_state_key(MARKER_KEY)
    table = Table(MemoryPartition())
    with pytest.raises(SerializationError, match="reserved"):
        table.put(MARKER_KEY, 1)
    assert not table.dirty


@pytest.mark.parametrize(
    "value", [2**64, -(2**63) - 1, {"deep": [[[[1]]]] * 2}, "\ud800", object()]
)
def test_a_value_that_cannot_reach_the_changelog_is_refused_before_the_state_changes(
    value: object,
) -> None:
    table = Table(MemoryPartition(), max_record_bytes=64)
    table.put(b"k", 1)
    if isinstance(value, dict):  # encodable, but larger than a record may be
        value = {"x": "y" * 100}
    with pytest.raises(SerializationError):
        table.put(b"k", value)
    assert table.get(b"k") == 1
    assert table.take_changes() == {b"k": b"1"}


def test_nesting_orjson_cannot_encode_is_refused() -> None:
    deep: object = 1
    for _ in range(300):
        deep = [deep]
    table = Table(MemoryPartition())
    with pytest.raises(SerializationError):
        table.put(b"k", deep)
