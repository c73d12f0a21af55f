"""Redis state backend (``redis://``, ``rediss://``, ``unix://``)."""

from keyshift.state.redis.store import RedisPartition, RedisStore, partition_keys

__all__ = ["RedisPartition", "RedisStore", "partition_keys"]
