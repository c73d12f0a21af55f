"""The operator DSL: streams, operators, serdes. Builds a topology; never runs it."""

from keyshift.operators.record import Record
from keyshift.operators.serdes import (
    BytesSerde,
    JsonSerde,
    Serde,
    StrSerde,
    get_serde,
    register_serde,
)
from keyshift.operators.stream import Stream
from keyshift.operators.topology import SubTopology, Topology
from keyshift.state.base import MISSING

__all__ = [
    "MISSING",
    "BytesSerde",
    "JsonSerde",
    "Record",
    "Serde",
    "Stream",
    "StrSerde",
    "SubTopology",
    "Topology",
    "get_serde",
    "register_serde",
]
