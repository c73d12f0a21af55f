"""`keyshift reset` and `keyshift state export/import` against the sandbox: a
reset refuses while workers run and makes the next run compute everything
again; --delete-internal removes the internal topics and the app's keys on
every configured Redis; export and import round-trip a store's state."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import ConsumerGroupTopicPartitions, Producer
from confluent_kafka.admin import AdminClient

from kafkautil import (
    converged,
    create_topic,
    expected_counts,
    final_counts,
    produce_json,
    read_topic,
    sentences,
    spawn,
    stop,
    values_by_key,
    wait_for,
    worker_env,
    write_app,
)
from keyshift.orchestration.placement import latest_locations
from keyshift.orchestration.reset import committed_offsets, group_members
from keyshift.runtime.kafka import read_topic as keyshift_read_topic
from keyshift.state.base import Stamp
from keyshift.state.changelog import MARKER_KEY

pytestmark = pytest.mark.integration

STORE = "counts"


def keyshift(
    directory: Path, *args: str, stdin: bytes | None = None, **env: str
) -> subprocess.CompletedProcess[bytes]:
    """The keyshift command in ``directory`` (its app module importable), with
    every sandbox Redis as a peer."""
    return subprocess.run(
        [sys.executable, "-m", "keyshift", *args],
        cwd=directory,
        input=stdin,
        capture_output=True,
        timeout=180,
        env=worker_env(directory, **env),
    )


def start_worker(directory: Path, ref: str, name: str = "solo") -> subprocess.Popen[bytes]:
    return spawn(
        [sys.executable, "-m", "keyshift", "worker", ref, "--instance-id", name],
        directory,
        directory / f"{name}.log",
        env=worker_env(directory),
    )


def log_tail(directory: Path, name: str = "solo") -> str:
    return (directory / f"{name}.log").read_text()[-3000:]


def run_until(directory: Path, ref: str, done, what: str, timeout: float = 90) -> None:
    """Run one worker until ``done()``, then stop it (exit 0)."""
    proc = start_worker(directory, ref)
    try:
        assert wait_for(done, timeout), f"{what}: {log_tail(directory)}"
    finally:
        assert stop(proc) == 0, log_tail(directory)


def wait_no_members(admin: AdminClient, group: str) -> None:
    assert wait_for(lambda: not group_members(admin, group), 30, 0.5)


def redis_state(url: str, app_id: str, partitions: int) -> dict[bytes, bytes]:
    """Every key and value of the app's ``counts`` store at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        out: dict[bytes, bytes] = {}
        for p in range(partitions):
            out.update(client.hgetall(f"ks:{{{app_id}:{STORE}:{p}}}:d"))
        return out
    finally:
        client.close()


def internal_topics(admin: AdminClient, app_id: str) -> list[str]:
    return sorted(t for t in admin.list_topics(timeout=10).topics if t.startswith(f"{app_id}--"))


def sink_by_partition(brokers: str, sink: str) -> dict[int, list[tuple[bytes, bytes, dict]]]:
    """The sink's records per partition, in order."""
    out: dict[int, list[tuple[bytes, bytes, dict]]] = {}
    for m in keyshift_read_topic({"bootstrap.servers": brokers}, sink, idle_s=1.0):
        out.setdefault(m.partition(), []).append((m.key(), m.value(), {}))
    return out


def parse_lines(data: bytes) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in data.splitlines() if line]


# ------------------------------------------------------------------ reset


@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_reset_refuses_while_running_and_the_next_run_computes_again(
    protocol, brokers, admin, redis_urls, unique, tmp_path: Path
) -> None:
    app_id, source, sink = unique("rs"), unique("sentences"), unique("counts")
    create_topic(admin, source, 3)
    data = sentences(1500)
    produce_json(brokers, source, data)
    ref = write_app(
        tmp_path, "rsapp", app_id, source, sink, "at_least_once", group_protocol=protocol
    )
    expected = expected_counts(data)

    proc = start_worker(tmp_path, ref)
    try:
        assert wait_for(lambda: converged(brokers, sink, expected), 90), log_tail(tmp_path)
        refused = keyshift(tmp_path, "reset", ref, "--delete-internal", "--yes")
        assert refused.returncode != 0
        assert b"has 1 member(s)" in refused.stderr and b"solo" in refused.stderr
        assert b"stop every worker" in refused.stderr
        # Nothing changed: the worker keeps its topics.
        assert f"{app_id}--{STORE}-changelog" in internal_topics(admin, app_id)
    finally:
        assert stop(proc) == 0, log_tail(tmp_path)
    first = sink_by_partition(brokers, sink)
    wait_no_members(admin, app_id)

    # A second Redis holds keys of the app too (another instance's state), and
    # both hold keys of another app that must survive.
    other = redis.Redis.from_url(redis_urls[1])
    main_redis = redis.Redis.from_url(redis_urls[0])
    try:
        for p in range(2500):  # more than one SCAN/UNLINK batch
            other.hset(f"ks:{{{app_id}:{STORE}:{p}}}:d", b"k", b"1")
        for client in (other, main_redis):
            client.hset(f"ks:{{{app_id}x:{STORE}:0}}:d", b"k", b"1")
        assert redis_state(redis_urls[0], app_id, 3)  # the run's state is there

        dry = keyshift(tmp_path, "reset", ref, "--delete-internal", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        out = dry.stdout.decode()
        assert "dry run: nothing changed" in out
        assert f"{app_id}--{STORE}-changelog" in out and f"{app_id}--state-locations" in out
        assert f"{redis_urls[1]}: 2500 keys of the app would be deleted" in out
        assert f"{source}[0]: " in out and " -> 0" in out
        assert other.exists(f"ks:{{{app_id}:{STORE}:0}}:d")
        assert f"{app_id}--{STORE}-changelog" in internal_topics(admin, app_id)

        done = keyshift(tmp_path, "reset", ref, "--delete-internal", "--yes")
        assert done.returncode == 0, done.stderr
        assert b"2500 keys" in done.stderr  # progress on standard error
        assert internal_topics(admin, app_id) == []
        assert not list(other.scan_iter(match=f"ks:{{{app_id}:*"))
        assert not list(main_redis.scan_iter(match=f"ks:{{{app_id}:*"))
        for client in (other, main_redis):
            assert client.exists(f"ks:{{{app_id}x:{STORE}:0}}:d")
            client.delete(f"ks:{{{app_id}x:{STORE}:0}}:d")
    finally:
        other.close()
        main_redis.close()
    partitions = [(source, p) for p in range(3)]
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 0)
    # The repartition topic went with its committed offsets: the group holds
    # offsets of the source only, so the next run reads the new topic from 0.
    group = ConsumerGroupTopicPartitions(app_id)
    held = admin.list_consumer_group_offsets([group])[app_id].result().topic_partitions
    assert {tp.topic for tp in held} == {source}

    # The next run computes every count again: its outputs are the first run's.
    total = sum(len(records) for records in first.values())
    run_until(
        tmp_path,
        ref,
        lambda: len(read_topic(brokers, sink, idle_s=0.5)) >= 2 * total,
        "second run",
    )
    everything = sink_by_partition(brokers, sink)
    before = [r for p, records in first.items() for r in records]
    after = [r for p, records in everything.items() for r in records[len(first.get(p, [])) :]]
    assert final_counts(after) == expected
    assert values_by_key(after) == values_by_key(before)


def test_reset_offsets_specs(brokers, admin, unique, tmp_path: Path) -> None:
    app_id, source, sink = unique("ro"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    producer = Producer({"bootstrap.servers": brokers})
    base = 1_700_000_000_000
    for p in range(2):
        for i in range(10):
            producer.produce(source, b'"a b"', b"k", partition=p, timestamp=base + i * 1000)
    producer.flush(30)
    ref = write_app(tmp_path, "roapp", app_id, source, sink, "at_least_once")
    partitions = [(source, 0), (source, 1)]

    latest = keyshift(tmp_path, "reset", ref, "--to-latest", "--yes")
    assert latest.returncode == 0, latest.stderr
    assert b"pass --delete-internal to rebuild the state" in latest.stdout  # the app has a store
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 10)

    # 4.5 s after the first record: the first record at or after it is the 6th.
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime((base + 4500) // 1000)) + ".500Z"
    dated = keyshift(tmp_path, "reset", ref, "--to-datetime", when, "--yes")
    assert dated.returncode == 0, dated.stderr
    assert f"{source}[0]: 10 -> 5" in dated.stdout.decode()
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 5)

    future = keyshift(tmp_path, "reset", ref, "--to-datetime", "2999-01-01", "--yes")
    assert future.returncode == 0, future.stderr
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 10)

    offsets = tmp_path / "offsets.csv"
    offsets.write_text(f"# topic,partition,offset\n{source},1,3\n")
    dry = keyshift(tmp_path, "reset", ref, "--to-offsets", str(offsets), "--dry-run")
    assert dry.returncode == 0 and f"{source}[1]: 10 -> 3" in dry.stdout.decode()
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 10)
    applied = keyshift(tmp_path, "reset", ref, "--to-offsets", str(offsets), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert committed_offsets(admin, app_id, partitions) == {(source, 0): 10, (source, 1): 3}

    offsets.write_text(f"{source},0,99\n")  # beyond the end: kept at the end
    clamped = keyshift(tmp_path, "reset", ref, "--to-offsets", str(offsets), "--yes")
    assert clamped.returncode == 0 and b"outside [0, 10]; using 10" in clamped.stdout
    offsets.write_text("not-a-source,0,1\n")
    foreign = keyshift(tmp_path, "reset", ref, "--to-offsets", str(offsets), "--yes")
    assert foreign.returncode != 0 and b"no source of the app" in foreign.stderr
    offsets.write_text(f"{source},zero,1\n")
    bad = keyshift(tmp_path, "reset", ref, "--to-offsets", str(offsets), "--yes")
    assert bad.returncode != 0 and b"line 1: partition and offset must be integers" in bad.stderr
    both = keyshift(tmp_path, "reset", ref, "--to-latest", "--to-earliest", "--yes")
    assert both.returncode == 2 and b"at most one of" in both.stderr
    unconfirmed = keyshift(tmp_path, "reset", ref, "--to-earliest", stdin=b"n\n")
    assert unconfirmed.returncode != 0 and b"Aborted" in unconfirmed.stderr
    assert committed_offsets(admin, app_id, partitions) == {(source, 0): 10, (source, 1): 3}

    earliest = keyshift(tmp_path, "reset", ref, "--yes")  # the default
    assert earliest.returncode == 0, earliest.stderr
    assert committed_offsets(admin, app_id, partitions) == dict.fromkeys(partitions, 0)


# ------------------------------------------------------------------ export / import


def test_export_reset_import_round_trip(brokers, admin, redis_urls, unique, tmp_path: Path) -> None:
    app_id, source, sink = unique("ex"), unique("sentences"), unique("counts")
    create_topic(admin, source, 3)
    data = sentences(1200)
    produce_json(brokers, source, data)
    ref = write_app(tmp_path, "exapp", app_id, source, sink, "at_least_once")
    expected = expected_counts(data)
    run_until(tmp_path, ref, lambda: converged(brokers, sink, expected), "first run")
    wait_no_members(admin, app_id)
    state = redis_state(redis_urls[0], app_id, 3)
    # A key that is not UTF-8 and a value that JSON would re-encode otherwise.
    client = redis.Redis.from_url(redis_urls[0])
    try:
        client.hset(f"ks:{{{app_id}:{STORE}:1}}:d", b"\xff\xfebin", b"1e3")
    finally:
        client.close()
    state[b"\xff\xfebin"] = b"1e3"

    exported = keyshift(tmp_path, "state", "export", ref, "--store", STORE)
    assert exported.returncode == 0, exported.stderr
    lines = parse_lines(exported.stdout)
    assert {line["key"]: line["value"] for line in lines if "key" in line} == expected
    assert {"key_b64": "//5iaW4=", "partition": 1, "value_b64": "MWUz"} in lines
    assert f"exported {len(state)} keys of store {STORE}".encode() in exported.stderr
    one = keyshift(tmp_path, "state", "export", ref, "--store", STORE, "--partition", "2")
    assert one.returncode == 0 and {line["partition"] for line in parse_lines(one.stdout)} == {2}
    missing = keyshift(tmp_path, "state", "export", ref, "--store", "nope")
    assert missing.returncode != 0 and b"no store 'nope' (its stores: counts)" in missing.stderr

    # Reset, dropping every internal topic and the state; nothing to reprocess.
    done = keyshift(tmp_path, "reset", ref, "--delete-internal", "--to-latest", "--yes")
    assert done.returncode == 0, done.stderr
    assert redis_state(redis_urls[0], app_id, 3) == {}
    sink_records = len(read_topic(brokers, sink))

    imported = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {len(state)} records".encode() in imported.stderr
    assert b"when workers next restore" in imported.stderr

    def restored() -> bool:
        return redis_state(redis_urls[0], app_id, 3) == state

    run_until(tmp_path, ref, restored, "restore of the import")
    assert len(read_topic(brokers, sink)) == sink_records  # no input processed again
    again = keyshift(tmp_path, "state", "export", ref, "--store", STORE)
    assert again.returncode == 0, again.stderr
    assert sorted(again.stdout.splitlines()) == sorted(exported.stdout.splitlines())


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_import_on_running_state_is_refused_then_applied_at_next_start(
    guarantee, brokers, admin, redis_urls, unique, tmp_path: Path
) -> None:
    app_id, source, sink = unique("im"), unique("sentences"), unique("counts")
    create_topic(admin, source, 4)
    data = sentences(400)
    produce_json(brokers, source, data)
    ref = write_app(tmp_path, "imapp", app_id, source, sink, guarantee)
    expected = expected_counts(data)
    seed = b'{"key": "alpha", "value": 1000}\n{"key": "beta", "value": null}\n'
    seed += b'{"key": "brand-new", "value": 7}\n'

    proc = start_worker(tmp_path, ref)
    try:
        assert wait_for(lambda: converged(brokers, sink, expected), 90), log_tail(tmp_path)
        refused = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=seed)
        assert refused.returncode != 0 and b"has 1 member(s)" in refused.stderr
    finally:
        assert stop(proc) == 0, log_tail(tmp_path)
    wait_no_members(admin, app_id)
    before = redis_state(redis_urls[0], app_id, 4)
    assert b"beta" in before

    # No partition in the lines: each key goes where the key_by's records go.
    imported = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=seed)
    assert imported.returncode == 0, imported.stderr
    assert b"imported 3 records (1 deletions)" in imported.stderr
    # Nothing moves until a worker restores the tasks.
    assert redis_state(redis_urls[0], app_id, 4) == before

    # The state is in this Redis already (handoff): the restore applies the
    # changelog beyond its stamp, the import included; then new input counts on.
    produce_json(brokers, source, ["alpha beta brand-new"])

    def counted() -> bool:
        last = final_counts(read_topic(brokers, sink, idle_s=0.5))
        return last.get("alpha") == 1001 and last.get("beta") == 1 and last.get("brand-new") == 8

    run_until(tmp_path, ref, counted, "counting on from the imported state")
    after = redis_state(redis_urls[0], app_id, 4)
    want = {k: v for k, v in before.items() if k not in (b"alpha", b"beta", b"brand-new")}
    want.update({b"alpha": b"1001", b"beta": b"1", b"brand-new": b"8"})
    assert after == want
    # Inputs before the import were not processed again.
    others = {k: v for k, v in final_counts(read_topic(brokers, sink)).items()}
    assert {k: v for k, v in others.items() if k not in ("alpha", "beta", "brand-new")} == {
        k: v for k, v in expected.items() if k not in ("alpha", "beta")
    }


def test_export_reads_each_partition_where_its_location_says(
    brokers, admin, redis_urls, unique, tmp_path: Path
) -> None:
    app_id, source, sink = unique("el"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    data = sentences(300)
    produce_json(brokers, source, data)
    ref = write_app(tmp_path, "elapp", app_id, source, sink, "at_least_once")
    expected = expected_counts(data)
    elsewhere = redis_urls[1]
    proc = spawn(
        [sys.executable, "-m", "keyshift", "worker", ref, "--instance-id", "solo"],
        tmp_path,
        tmp_path / "solo.log",
        env=worker_env(tmp_path, KEYSHIFT_STATE=elsewhere),
    )
    exports = []

    def exported_all() -> bool:
        done = keyshift(tmp_path, "state", "export", ref, "--store", STORE)
        exports.append(done)
        state = {line["key"]: line["value"] for line in parse_lines(done.stdout)}
        return done.returncode == 0 and state == expected

    try:
        assert wait_for(lambda: converged(brokers, sink, expected), 90), log_tail(tmp_path)
        # Export reads a running app's state too (each key as it is when read).
        # Outputs are delivered before the commit writes Redis, so the state
        # may trail the sink by a commit interval.
        assert wait_for(exported_all, 30), (exports[-1].stderr, log_tail(tmp_path))
    finally:
        assert stop(proc) == 0, log_tail(tmp_path)
    exported = exports[-1]
    assert f"from {elsewhere}".encode() in exported.stderr

    # A location naming a Redis this configuration does not know is not read.
    unknown = keyshift(tmp_path, "state", "export", ref, "--store", STORE, KEYSHIFT_PEERS="")
    assert unknown.returncode == 0, unknown.stderr
    assert unknown.stdout == b""
    assert b"is not a configured Redis; reading this instance's state" in unknown.stderr


def test_import_checks_lines_and_placement(brokers, admin, unique, tmp_path: Path) -> None:
    app_id, source = unique("il"), unique("sentences")
    create_topic(admin, source, 2)
    module = tmp_path / "ilapp.py"
    module.write_text(
        "from keyshift import App\n"
        f"app = App({app_id!r})\n"
        f"app.stream({source!r}).count(store='direct')\n"
    )
    ref = "ilapp:app"
    no_partition = keyshift(
        tmp_path, "state", "import", ref, "--store", "direct", stdin=b'{"key": "a", "value": 1}\n'
    )
    assert no_partition.returncode != 0
    assert (
        b"line 1: no partition" in no_partition.stderr and b"--partitioner" in no_partition.stderr
    )
    beyond = keyshift(
        tmp_path,
        "state",
        "import",
        ref,
        "--store",
        "direct",
        stdin=b'{"key": "a", "value": 1, "partition": 2}\n',
    )
    assert beyond.returncode != 0 and b"beyond the store's 2 partitions" in beyond.stderr
    bad = keyshift(tmp_path, "state", "import", ref, "--store", "direct", stdin=b"\n{nope\n")
    assert bad.returncode != 0 and b"line 2: not JSON" in bad.stderr

    # With --partitioner the keys go where that partitioner puts them.
    lines = b"".join(b'{"key": "k%d", "value": %d}\n' % (i, i) for i in range(40))
    placed = keyshift(
        tmp_path,
        "state",
        "import",
        ref,
        "--store",
        "direct",
        "--partitioner",
        "consistent",
        stdin=lines,
    )
    assert placed.returncode == 0, placed.stderr
    records = read_topic(brokers, f"{app_id}--direct-changelog", idle_s=0.5)
    assert len(records) == 40 + 2  # the records and one marker per partition
    reference = Producer({"bootstrap.servers": brokers, "partitioner": "consistent"})
    try:
        want: dict[bytes, int] = {}

        def note(err, msg) -> None:  # noqa: ANN001
            want[msg.key()] = msg.partition()

        scratch = unique("scratch")
        create_topic(admin, scratch, 2)
        for i in range(40):
            reference.produce(scratch, b"1", b"k%d" % i, on_delivery=note)
        reference.flush(30)
    finally:
        reference.flush(5)
    got = _partitions_of(brokers, f"{app_id}--direct-changelog")
    assert got == want


def _partitions_of(brokers: str, topic: str) -> dict[bytes, int]:
    """Key -> partition of the data records of a changelog (markers left out)."""
    return {
        m.key(): m.partition()
        for m in keyshift_read_topic({"bootstrap.servers": brokers}, topic, idle_s=0.5)
        if m.key() != MARKER_KEY
    }


def test_import_refuses_state_a_restore_would_not_update(
    brokers, admin, redis_urls, unique, tmp_path: Path
) -> None:
    app_id, source, sink = unique("ir"), unique("sentences"), unique("counts")
    create_topic(admin, source, 2)
    data = sentences(200)
    produce_json(brokers, source, data)
    ref = write_app(tmp_path, "irapp", app_id, source, sink, "at_least_once")
    expected = expected_counts(data)
    run_until(tmp_path, ref, lambda: converged(brokers, sink, expected), "first run")
    wait_no_members(admin, app_id)
    client = redis.Redis.from_url(redis_urls[0])
    partition = next(
        p for p in range(2) if client.hexists(f"ks:{{{app_id}:{STORE}:{p}}}:d", b"alpha")
    )
    meta = f"ks:{{{app_id}:{STORE}:{partition}}}:m"
    original = Stamp.decode(client.hget(meta, "stamp"))
    locations, _ = latest_locations(
        (m.key(), m.value())
        for m in keyshift_read_topic({"bootstrap.servers": brokers}, f"{app_id}--state-locations")
    )
    published = locations[f"{STORE}:{partition}".encode()].epoch
    changelog = f"{app_id}--{STORE}-changelog"

    def changelog_records() -> int:
        return len(read_topic(brokers, changelog, idle_s=0.5))

    written = changelog_records()
    seed = b'{"key": "alpha", "value": 500}\n'
    try:
        # Restores that claimed the task twice and never published a location.
        client.hset(meta, "stamp", replace(original, epoch=published + 2).encode())
        ahead = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=seed)
        assert ahead.returncode != 0
        assert f"owner epoch {published + 2}, ahead of its published".encode() in ahead.stderr
        # State that reflects more changelog than the changelog holds.
        beyond_end = replace(original, changelog_offset=original.changelog_offset + 10_000)
        client.hset(meta, "stamp", beyond_end.encode())
        beyond = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=seed)
        assert beyond.returncode != 0 and b"beyond the changelog's end" in beyond.stderr
        assert changelog_records() == written  # refused before writing anything

        # One restore that never published: the import's marker takes its
        # epoch, so the next restore (a handoff here) applies it.
        client.hset(meta, mapping={"stamp": replace(original, epoch=published + 1).encode()})
        client.hset(meta, "epoch", published + 1)
        imported = keyshift(tmp_path, "state", "import", ref, "--store", STORE, stdin=seed)
        assert imported.returncode == 0, imported.stderr
        data_key = f"ks:{{{app_id}:{STORE}:{partition}}}:d"
        run_until(tmp_path, ref, lambda: client.hget(data_key, b"alpha") == b"500", "import")
    finally:
        client.close()


def test_long_runs_report_progress(
    brokers, admin, redis_url, unique, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export, import and the deletion of a reset report progress on the way
    (here after every batch, as they do every second on long runs)."""
    from keyshift import App, progress
    from keyshift.orchestration import reset, state_export, state_import

    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    app_id, source = unique("pg"), unique("sentences")
    create_topic(admin, source, 1)
    app = App(app_id, brokers=brokers, state=redis_url)
    app.stream(source).flat_map(str.split).key_by(lambda w: w).count(store=STORE).to(unique("o"))
    client = redis.Redis.from_url(redis_url)
    try:
        client.hset(f"ks:{{{app_id}:{STORE}:0}}:d", mapping={f"w{i}": str(i) for i in range(5000)})
        lines: list[bytes] = []
        seen: list[str] = []
        stats = state_export.export_store(
            app.settings, app.topology, STORE, lines.append, progress=seen.append
        )
        assert stats.keys == 5000 and len(lines) == 5000
        assert any(line.startswith("exported ") and "keys (at counts[0])" in line for line in seen)

        seen.clear()
        imported = state_import.import_store(
            app.settings, app.topology, STORE, lines, progress=seen.append, batch=1000
        )
        assert imported.records == 5000 and imported.partitions == {0}
        assert any(line.startswith("imported ") and "so far" in line for line in seen)

        seen.clear()
        deleted = reset.delete_app_keys(redis_url, app_id, progress=seen.append)
        assert deleted == 1  # one hash holds the store partition
        for p in range(3000):
            client.hset(f"ks:{{{app_id}:{STORE}:{p}}}:d", "k", "1")
        deleted = reset.delete_app_keys(redis_url, app_id, progress=seen.append)
        assert deleted == 3000
        assert any("deleted" in line and "keys so far" in line for line in seen)
        assert seen[-1] == f"{redis_url}: deleted 3000 keys"
    finally:
        client.close()
