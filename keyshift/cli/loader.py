"""Load ``MODULE:ATTR`` app references given on the command line."""

from __future__ import annotations

import importlib
import os
import sys

import click

from keyshift.app.app import App


def load_app(ref: str) -> App:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{ref!r}: expected MODULE:APP, e.g. examples.wordcount:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise click.BadParameter(f"{ref!r} is not a keyshift App (got {type(app).__name__})")
    app.topology.app_ref = ref
    return app
