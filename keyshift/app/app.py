"""The public entry point: :class:`App`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from keyshift.config import Settings
from keyshift.operators.serdes import Serde, get_serde
from keyshift.operators.stream import Stream
from keyshift.operators.topology import Topology
from keyshift.runtime.clients import KAFKA, Clients
from keyshift.runtime.worker import Worker


class App:
    """A keyshift application: a named topology plus its settings.

    Example::

        app = App("wordcount", brokers="127.0.0.1:9092", guarantee="exactly_once")
        (app.stream("sentences")
            .flat_map(lambda s: s.split())
            .key_by(lambda w: w)
            .count(store="counts")
            .to("word-counts"))

    Unset settings come from ``KEYSHIFT_*`` environment variables, then defaults
    (see :class:`keyshift.config.Settings`).
    """

    def __init__(
        self,
        app_id: str,
        *,
        brokers: str | None = None,
        state: str | None = None,
        guarantee: str | None = None,
        **settings: Any,
    ) -> None:
        self._given: dict[str, Any] = dict(
            settings, brokers=brokers, state=state, guarantee=guarantee
        )
        self.settings = Settings.build(app_id, **self._given)
        self.topology = Topology(app_id)

    @property
    def app_id(self) -> str:
        return self.settings.app_id

    def stream(
        self,
        topic: str,
        *,
        key_serde: str | Serde = "str",
        value_serde: str | Serde = "json",
    ) -> Stream:
        """Records of ``topic``; values are JSON-decoded and keys UTF-8 by default."""
        sub = self.topology.add_source(topic, get_serde(key_serde), get_serde(value_serde))
        return Stream(self.topology, sub, sub.root)

    def configure(self, **overrides: Any) -> None:
        """Override settings (None = keep); used by the CLI's flags."""
        given = {k: v for k, v in asdict(self.settings).items() if k != "app_id"}
        given.update({k: v for k, v in overrides.items() if v is not None})
        self.settings = Settings.build(self.settings.app_id, **given)

    def worker(self, *, clients: Clients = KAFKA) -> Worker:
        """A worker for this app (call ``run()`` on it, ``stop()`` from elsewhere).

        ``clients``: where its Kafka clients and state stores come from (tests
        pass stand-ins).
        """
        return Worker(self.topology, self.settings, clients=clients)

    def run(self) -> None:
        """Run one worker instance in this process until stopped."""
        self.worker().run()
