"""The ``keyshift`` command line (click)."""

from __future__ import annotations

import click

from keyshift._version import __version__
from keyshift.cli.autoscale import autoscale
from keyshift.cli.dev import dev
from keyshift.cli.reset import reset
from keyshift.cli.run import run, scale
from keyshift.cli.state import state
from keyshift.cli.status import status
from keyshift.cli.topics import topics
from keyshift.cli.worker import worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keyshift")
def main() -> None:
    """keyshift: elastic Kafka stream processing with Redis state."""


main.add_command(dev)
main.add_command(worker)
main.add_command(run)
main.add_command(scale)
main.add_command(autoscale)
main.add_command(topics)
main.add_command(status)
main.add_command(reset)
main.add_command(state)
