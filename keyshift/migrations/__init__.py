"""Bringing a task's state to its new owner: changelog replay (the always-correct baseline)."""

from keyshift.migrations.replay import ReplayResult, replay_changelog

__all__ = ["ReplayResult", "replay_changelog"]
