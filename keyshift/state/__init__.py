"""Operator state: the backend interface, backends, and the per-task write-back table."""

from keyshift.state.base import Stamp, Store, StorePartition
from keyshift.state.factory import open_store
from keyshift.state.table import Table

__all__ = ["Stamp", "Store", "StorePartition", "Table", "open_store"]
