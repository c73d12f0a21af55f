"""The public application object, :class:`App`: a named topology and its settings."""

from keyshift.app.app import App

__all__ = ["App"]
