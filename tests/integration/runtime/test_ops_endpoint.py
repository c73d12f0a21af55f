"""The operations endpoint of a worker running against the real broker and Redis:
the Prometheus scrape counts what the worker did, readiness follows its
assignment, and health fails while a record is stuck in user code."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from fakes import WorkerThread, wait_for
from kafkautil import create_topic
from keyshift import App
from keyshift.runtime import ops

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening (yet, or any more)
        return 0, str(exc)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_readiness_and_health_of_a_running_worker(
    brokers: str, admin: Any, redis_url: str, unique: Callable[..., str], monkeypatch: Any
) -> None:
    monkeypatch.setattr(ops, "DEFAULT_STALL_S", 2.0)
    app_id, source, sink = unique("ops"), unique("in"), unique("out")
    create_topic(admin, source, 2)
    release = threading.Event()

    def hold(word: str) -> str:
        if word == "stuck":
            release.wait(60)
        return word

    app = App(app_id, state=redis_url, commit_interval_ms=200, metrics_port=0)
    app.stream(source).map(hold).key_by(lambda w: w).count(store="counts").to(sink)
    worker = app.worker()
    producer = Producer({"bootstrap.servers": brokers})
    with WorkerThread(worker) as running:
        assert wait_for(lambda: worker.ops_port is not None, 30)
        port = worker.ops_port
        assert port is not None
        assert wait_for(lambda: get(port, "/readyz")[0] == 200, 60), (
            get(port, "/readyz"),
            running.error,
        )
        for i in range(100):
            producer.produce(source, orjson.dumps(f"w{i % 10}"))
        producer.produce(source, b"{not json", b"bad")
        producer.flush(30)
        seen = "keyshift_records_in_total", (("topic", source),)
        assert wait_for(lambda: scrape(port).get(seen) == 101, 60), scrape(port)
        # key_by sends every word through the app's repartition topic to the count.
        out = "keyshift_records_out_total", (("topic", sink),)
        assert wait_for(lambda: scrape(port).get(out) == 100, 30), scrape(port)
        got = scrape(port)
        through = f"{app_id}--keyby-1-repartition"
        assert got[("keyshift_records_out_total", (("topic", through),))] == 100
        assert got[("keyshift_records_in_total", (("topic", through),))] == 100
        assert got[("keyshift_dead_letters_total", (("topic", source),))] == 1
        assert got[("keyshift_rebalances_total", ())] >= 1
        assert wait_for(lambda: scrape(port)[("keyshift_commit_duration_seconds_count", ())] > 0)
        assert wait_for(
            lambda: sum(v for (n, _), v in scrape(port).items() if n == "keyshift_state_keys") == 10
        )
        lags = {
            labels: v for (n, labels), v in scrape(port).items() if n == "keyshift_consumer_lag"
        }
        assert {dict(labels)["partition"] for labels in lags} == {"0", "1"}
        assert get(port, "/healthz")[0] == 200

        producer.produce(source, orjson.dumps("stuck"))
        producer.flush(30)
        assert wait_for(lambda: get(port, "/healthz")[0] == 503, 30)
        assert "has not turned" in get(port, "/healthz")[1]
        assert get(port, "/readyz")[0] == 503
        release.set()
        assert wait_for(lambda: get(port, "/healthz")[0] == 200, 30)
        assert wait_for(lambda: get(port, "/readyz")[0] == 200, 30)
    assert running.error is None
