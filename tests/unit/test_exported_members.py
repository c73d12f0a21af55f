"""The public API: exactly these names, all importable."""

from __future__ import annotations

import pytest

import keyshift

pytestmark = pytest.mark.unit

EXPECTED = [
    "App",
    "KeyshiftError",
    "Record",
    "Serde",
    "Settings",
    "Stream",
    "__version__",
    "register_serde",
]


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(keyshift.__all__) == sorted(EXPECTED)
    assert len(keyshift.__all__) == len(set(keyshift.__all__))


@pytest.mark.parametrize("name", EXPECTED)
def test_name_resolves(name: str) -> None:
    assert getattr(keyshift, name) is not None


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from keyshift import *", namespace)
    assert set(EXPECTED) <= set(namespace)


def test_members_are_the_real_objects() -> None:
    from keyshift._version import __version__
    from keyshift.errors import KeyshiftError
    from keyshift.operators.record import Record
    from keyshift.operators.serdes import Serde, register_serde
    from keyshift.operators.stream import Stream

    assert keyshift.__version__ == __version__
    assert isinstance(keyshift.__version__, str) and keyshift.__version__
    assert keyshift.KeyshiftError is KeyshiftError
    assert keyshift.Record is Record
    assert keyshift.Serde is Serde
    assert keyshift.Stream is Stream
    assert keyshift.register_serde is register_serde
    assert isinstance(keyshift.App, type)
    assert isinstance(keyshift.Settings, type)
