"""Dict-backed store partitions with the same contract as the Redis backend."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from keyshift.errors import FencedError, StateLostError
from keyshift.state.base import Stamp


class MemoryPartition:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.stamp: Stamp | None = None
        self.epoch = 0
        self.owner = ""
        self._aside: MemoryPartition | None = None
        self.aside_tag_value: str | None = None

    @property
    def aside(self) -> MemoryPartition:
        """The aside copy (created on first use)."""
        if self._aside is None:
            self._aside = MemoryPartition()
        return self._aside

    def set_aside(self, tag: str) -> bool:
        aside = self.aside
        if aside.aside_tag_value == tag:
            return False
        aside.data, self.data = self.data, {}
        aside.aside_tag_value = tag
        return True

    def aside_tag(self) -> str | None:
        return self.aside_tag_value

    def claim(self, owner: str, minimum: int = 0) -> int:
        self.epoch = max(self.epoch + 1, minimum)
        self.owner = owner
        return self.epoch

    def read_stamp(self) -> Stamp | None:
        return self.stamp

    def get_many(self, keys: Sequence[bytes], epoch: int = 0) -> list[bytes | None]:
        if epoch and self.epoch < epoch:
            raise StateLostError("memory store", f"owner epoch {self.epoch} < {epoch}")
        return [self.data.get(k) for k in keys]

    def commit(self, changes: Mapping[bytes, bytes | None], stamp: Stamp, epoch: int) -> None:
        self._fence(epoch)
        for key, value in changes.items():
            if value is None:
                self.data.pop(key, None)
            else:
                self.data[key] = value
        self.stamp = stamp

    def owner_epoch(self) -> int:
        return self.epoch

    def copy_missing(self, items: Sequence[tuple[bytes, bytes]], epoch: int) -> int:
        self._fence(epoch)
        added = 0
        for key, value in items:
            if key not in self.data:
                self.data[key] = value
                added += 1
        return added

    def drop_keys(self, keys: Sequence[bytes]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def clear_data(self) -> None:
        self.data.clear()
        self.stamp = None

    def _fence(self, epoch: int) -> None:
        if self.epoch > epoch:
            raise FencedError(
                f"owner epoch {self.epoch} > {epoch}: partition claimed by {self.owner}"
            )
        if self.epoch < epoch:
            raise StateLostError("memory store", f"owner epoch {self.epoch} < {epoch}")

    def scan(self, batch: int = 1000) -> Iterator[list[tuple[bytes, bytes]]]:
        items = list(self.data.items())
        for start in range(0, len(items), batch):
            yield items[start : start + batch]

    def key_count(self) -> int:
        return len(self.data)

    def usage(self) -> dict[str, int]:
        return {"keys": len(self.data), "bytes": sum(len(k) + len(v) for k, v in self.data.items())}

    def clear(self) -> None:
        self.data.clear()
        self.stamp = None
        self.epoch = 0
        self.aside_tag_value = None


class MemoryStore:
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._partitions: dict[tuple[str, str, int], MemoryPartition] = {}

    def partition(
        self, app_id: str, store: str, partition: int, *, aside: bool = False
    ) -> MemoryPartition:
        main = self._partitions.setdefault((app_id, store, partition), MemoryPartition())
        return main.aside if aside else main

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
