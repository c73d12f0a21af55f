"""keyshift: elastic, Kafka-integrated stream processing with Redis state."""

from keyshift._version import __version__
from keyshift.app import App
from keyshift.config import Settings
from keyshift.errors import KeyshiftError
from keyshift.operators import Record, Serde, Stream, register_serde

__all__ = [
    "App",
    "KeyshiftError",
    "Record",
    "Serde",
    "Settings",
    "Stream",
    "__version__",
    "register_serde",
]
