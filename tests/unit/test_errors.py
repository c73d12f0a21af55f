"""The error hierarchy callers rely on."""

from __future__ import annotations

import pytest

from keyshift.errors import FencedError, StateError

pytestmark = pytest.mark.unit


def test_fenced_error_is_state_error() -> None:
    assert issubclass(FencedError, StateError)
