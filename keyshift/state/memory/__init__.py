"""In-process state backend (``memory://``): for tests and embedded use."""

from keyshift.state.memory.store import MemoryPartition, MemoryStore

__all__ = ["MemoryPartition", "MemoryStore"]
