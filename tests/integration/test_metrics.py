"""Prometheus metrics: real worker processes, a real /metrics endpoint, a real PostgreSQL."""

from __future__ import annotations

import logging
import os
import signal
import threading
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dispatchbox import publish_many
from dispatchbox.observability.database_metrics import DatabaseCollector
from dispatchbox.observability.metrics import build_registry
from dispatchbox.tempcluster import free_port
from tests.worker_helpers import (
    WorkerRun,
    counts,
    publish,
    records,
    wait_for_workers,
    wait_until,
)

FAST = ["--backoff-base", "0.05", "--backoff-max", "0.1", "--poll-interval", "0.2"]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), v in samples.items():
        if sample == name:
            out[dict(labels)[label]] += v
    return dict(out)


def query(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def wait_for_endpoint(port: int, run: WorkerRun) -> None:
    def up() -> bool:
        if run.proc.poll() is not None:
            raise AssertionError("worker exited: " + run.log())
        try:
            scrape(port)
        except OSError:
            return False
        return True

    wait_until(up, 60, "the metrics endpoint")


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    d = tmp_path / "records"
    d.mkdir()
    return d


def test_counters_of_two_worker_processes_add_up_and_match_the_database(
    db_dsn: str, record_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier run")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    port = free_port()
    run = WorkerRun(
        db_dsn,
        record_dir,
        "--processes", "2", "--batch-size", "20", "--metrics-port", str(port), *FAST,
        log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        wait_for_endpoint(port, run)
        wait_for_workers(run, 2)
        publish(db_dsn, "test.ok", 600)
        publish(db_dsn, "test.async_ok", 400)
        publish(db_dsn, "test.fail_twice", 20, max_attempts=5)
        publish(db_dsn, "test.always_fail", 15, max_attempts=3)
        publish(db_dsn, "test.permanent", 5, max_attempts=5)
        publish(db_dsn, "test.always_fail", 4, max_attempts=2, aggregate_type="invoice")
        wait_until(lambda: counts(db_dsn) == {"done": 1020, "dead": 24}, 90, "every event final")
        # Database gauges are cached for a few seconds, outcomes written every second: wait for
        # a scrape that has caught up with both.
        wait_until(
            lambda: (
                sum(by_label(parse(scrape(port)), "dispatchbox_dead_events_current",
                             "event_type").values()) == 24
                and sum(by_label(parse(scrape(port)), "dispatchbox_events_dispatched_total",
                                 "event_type").values()) == len(records(record_dir))
            ),
            20,
            "the metrics to catch up",
        )  # fmt: skip
        samples = parse(scrape(port))
        files = sorted(os.listdir(metrics_dir))
    finally:
        assert run.stop() == 0, run.log()

    assert "counter_999999.db" not in files, "the supervisor did not clean its directory"
    calls = records(record_dir)
    pids = Counter(pid for _, _, _, pid, _ in calls)
    assert len(pids) == 2 and all(n < len(calls) for n in pids.values()), "both processes worked"
    assert {f"counter_{pid}.db" for pid in pids} <= set(files)

    done = dict(query(db_dsn, "SELECT event_type, count(*) FROM outbox_event "
                              "WHERE status = 'done' GROUP BY 1"))  # fmt: skip
    dispatched_done = {
        dict(labels)["event_type"]: v
        for (name, labels), v in samples.items()
        if name == "dispatchbox_events_dispatched_total" and dict(labels)["outcome"] == "done"
    }
    assert dispatched_done == done
    failures = dict(query(db_dsn, "SELECT e.event_type, count(*) FROM outbox_event_error r "
                                  "JOIN outbox_event e ON e.id = r.event_id "
                                  "WHERE r.error_type <> 'PermanentError' GROUP BY 1"))  # fmt: skip
    dispatched_failed = {
        dict(labels)["event_type"]: v
        for (name, labels), v in samples.items()
        if name == "dispatchbox_events_dispatched_total" and dict(labels)["outcome"] == "failed"
    }
    assert dispatched_failed == failures == {"test.fail_twice": 40, "test.always_fail": 53}
    assert value(
        samples, "dispatchbox_events_dispatched_total", event_type="test.permanent",
        outcome="permanent",
    ) == 5  # fmt: skip

    dead = {
        (t, a): n
        for t, a, n in query(db_dsn, "SELECT event_type, aggregate_type, count(*) FROM "
                                     "outbox_event WHERE status = 'dead' GROUP BY 1, 2")
    }  # fmt: skip
    assert dead == {
        ("test.always_fail", "order"): 15,
        ("test.always_fail", "invoice"): 4,
        ("test.permanent", "order"): 5,
    }
    for (event_type, aggregate_type), n in dead.items():
        labels = {"event_type": event_type, "aggregate_type": aggregate_type}
        # A handler's destination defaults to its event type (migration 0007's column).
        where = {**labels, "destination": event_type}
        assert value(samples, "dispatchbox_dead_events_total", **where) == n
        assert value(samples, "dispatchbox_dead_events_current", **labels) == n
    attempts = {
        t: (n, s)
        for t, n, s in query(db_dsn, "SELECT event_type, count(*), sum(attempts) FROM "
                                     "outbox_event WHERE status = 'dead' GROUP BY 1")
    }  # fmt: skip
    for event_type, (n, total) in attempts.items():
        hist = "dispatchbox_event_attempts_before_dead"
        assert value(samples, f"{hist}_count", event_type=event_type) == n
        assert value(samples, f"{hist}_sum", event_type=event_type) == total
    handler_runs = len(calls)
    assert sum(
        v for (name, _), v in samples.items()
        if name == "dispatchbox_handler_duration_seconds_count"
    ) == handler_runs  # fmt: skip
    assert value(samples, "dispatchbox_worker_processes") == 2
    assert value(samples, "dispatchbox_database_up") == 1
    assert value(samples, "dispatchbox_pending_events") == 0
    assert value(samples, "dispatchbox_oldest_dead_age_seconds") > 0

    # No event id and no raw error text in any label.
    ids = {str(r[0]) for r in query(db_dsn, "SELECT id FROM outbox_event")}
    for (_, labels), _v in samples.items():
        for key, label_value in labels:
            assert key not in ("id", "event_id", "error")
            if key != "le":
                assert label_value not in ids, (key, label_value)
            assert "cannot deliver" not in label_value and "downstream" not in label_value


@pytest.mark.slow
def test_a_killed_worker_keeps_its_counts_and_loses_its_live_gauge(
    db_dsn: str, record_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    port = free_port()
    run = WorkerRun(
        db_dsn, record_dir, "--processes", "2", "--metrics-port", str(port), *FAST,
        log=tmp_path / "worker.log",
    )  # fmt: skip
    try:
        wait_for_endpoint(port, run)
        publish(db_dsn, "test.ok", 400)
        wait_until(lambda: counts(db_dsn) == {"done": 400}, 60, "400 done")
        done = {"event_type": "test.ok", "outcome": "done"}
        wait_until(
            lambda: (
                value(parse(scrape(port)), "dispatchbox_events_dispatched_total", **done) == 400
            ),
            10,
            "the outcomes written",
        )
        pids = {pid for _, _, _, pid, _ in records(record_dir)}
        victim = next(iter(pids))
        before = parse(scrape(port))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: run.log().count("worker_process_started") >= 3, 60, "a restart")
        wait_until(
            lambda: value(parse(scrape(port)), "dispatchbox_worker_processes") == 2,
            30,
            "two live processes again",
        )
        publish(db_dsn, "test.ok", 100)
        wait_until(lambda: counts(db_dsn) == {"done": 500}, 60, "500 done")
        wait_until(
            lambda: (
                value(parse(scrape(port)), "dispatchbox_events_dispatched_total", **done) == 500
            ),
            10,
            "the outcomes written",
        )
        after = parse(scrape(port))
        files = set(os.listdir(metrics_dir))
    finally:
        assert run.stop() == 0, run.log()
    assert value(before, "dispatchbox_events_dispatched_total", **done) == 400
    assert value(after, "dispatchbox_events_dispatched_total", **done) == 500
    assert f"counter_{victim}.db" in files, "the dead process's counts must stay"
    assert f"gauge_livesum_{victim}.db" not in files, "its live gauge must go"


def _make_state(dsn: str) -> dict[str, list[int]]:
    """Events in every state, with known ages, errors and redrive counts."""
    with psycopg.connect(dsn) as conn:
        ids = publish_many(
            conn,
            [
                {"aggregate_type": agg, "aggregate_id": str(i), "event_type": t, "payload": {}}
                for i, (t, agg) in enumerate(
                    [("a.type", "order")] * 6 + [("b.type", "user")] * 3 + [("c.type", "order")] * 5
                )
            ],
        )
        dead_a, dead_b, pending, redriven = ids[:6], ids[6:9], ids[9:12], ids[12:14]
        errors = [
            "RuntimeError: e1 order 1",
            "RuntimeError: e1 order 2",
            "RuntimeError: e1 order 3",
            "KeyError: e2",
            "KeyError: e2",
            "OSError: e3",
        ]
        for event_id, error in zip(dead_a, errors, strict=True):
            conn.execute(
                "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
                "last_error = %s, dead_at = now() - interval '10 seconds' WHERE id = %s",
                [error, event_id],
            )
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
            "last_error = 'ValueError: old', dead_at = now() - interval '2 hours' "
            "WHERE id = ANY(%s)",
            [dead_b],
        )
        conn.execute(
            "UPDATE outbox_event SET next_attempt_at = now() - interval '100 seconds' "
            "WHERE id = ANY(%s)",
            [pending],
        )
        conn.execute(
            "UPDATE outbox_event SET status = 'done', done_at = now(), redrive_count = 1 "
            "WHERE id = %s",
            [redriven[0]],
        )
        # Redriven twice before (as a redrive leaves it: pending), then dead again.
        conn.execute("UPDATE outbox_event SET redrive_count = 2 WHERE id = %s", [redriven[1]])
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', last_error = 'OSError: e3', "
            "dead_at = now() - interval '3 hours' WHERE id = %s",
            [redriven[1]],
        )
        conn.commit()
    return {"dead_a": dead_a, "dead_b": dead_b, "pending": pending, "redriven": redriven}


def test_database_gauges_match_a_known_state(db_dsn: str) -> None:
    _make_state(db_dsn)
    collector = DatabaseCollector(db_dsn, inflow_window=600, top_fingerprints=2)
    try:
        registry = build_registry(None, database=collector)
        from prometheus_client import generate_latest

        samples = parse(generate_latest(registry).decode())
    finally:
        collector.close()
    assert value(samples, "dispatchbox_database_up") == 1
    # 14 published: 10 dead (one of them redriven before), 1 done, 3 pending and late.
    assert value(samples, "dispatchbox_pending_events") == 3
    assert value(samples, "dispatchbox_running_events") == 0
    assert 100 <= value(samples, "dispatchbox_oldest_pending_age_seconds") < 200
    assert 3 * 3600 <= value(samples, "dispatchbox_oldest_dead_age_seconds") < 3 * 3600 + 60
    current = "dispatchbox_dead_events_current"
    assert value(samples, current, event_type="a.type", aggregate_type="order") == 6
    assert value(samples, current, event_type="b.type", aggregate_type="user") == 3
    assert value(samples, current, event_type="c.type", aggregate_type="order") == 1
    # Deaths of the last 10 minutes: e1 x3, e2 x2, e3 x1 (the 2- and 3-hour-old ones are out).
    inflow = by_label(samples, "dispatchbox_dead_inflow_by_fingerprint", "fingerprint")
    from dispatchbox.fingerprint import fingerprint

    assert inflow == {
        fingerprint("RuntimeError: e1 order 1"): 3,
        fingerprint("KeyError: e2"): 2,
        "other": 1,
    }
    redriven = by_label(samples, "dispatchbox_redriven_events", "outcome")
    assert redriven == {"done": 1, "dead_again": 1, "in_flight": 0}


def test_scrapes_share_one_cached_query_and_then_see_new_data(db_dsn: str) -> None:
    collector = DatabaseCollector(db_dsn, cache_seconds=1.0)
    queried = 0
    original = collector._query

    def counting(now: float) -> Any:
        nonlocal queried
        queried += 1
        return original(now)

    collector._query = counting  # type: ignore[method-assign]
    try:
        snaps = []
        threads = [
            threading.Thread(target=lambda: snaps.append(collector.snapshot())) for _ in range(20)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert queried == 1, "a storm of scrapes ran more than one set of queries"
        assert all(s.health["pending"] == 0 for s in snaps)
        publish(db_dsn, "any.type", 5)
        assert collector.snapshot().health["pending"] == 0, "served from the cache"
        wait_until(lambda: collector.snapshot().health["pending"] == 5, 5, "a fresh query")
        assert queried == 2
    finally:
        collector.close()


def test_a_database_outage_is_a_gauge_not_a_failed_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=x user=x password=hunter2-SeCrEt"
    collector = DatabaseCollector(dsn, cache_seconds=0, connect_timeout=2)
    from prometheus_client import generate_latest

    with caplog.at_level(logging.DEBUG, logger="dispatchbox"):
        text = generate_latest(build_registry(None, database=collector)).decode()
        generate_latest(build_registry(None, database=collector)).decode()
    samples = parse(text)
    assert value(samples, "dispatchbox_database_up") == 0
    assert not any(name == "dispatchbox_pending_events" for name, _ in samples)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "an outage is logged once, not at every scrape"
    assert all("hunter2" not in r.getMessage() for r in caplog.records)


def test_a_taken_metrics_port_stops_the_worker_in_one_line(db_dsn: str) -> None:
    import socket

    from tests.conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            "worker", "--app", "tests.worker_app:dispatcher", "--processes", "1",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(port), dsn=db_dsn,
        )  # fmt: skip
    assert result.code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"dispatchbox: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in result.stderr


def test_serve_on_the_same_host_serves_the_workers_counters(
    db_dsn: str, record_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.acceptance.test_api import Server

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "shared"))
    srv = Server(db_dsn, tmp_path / "serve.log", "--insecure-no-auth", token=None, keep_env=True)
    run = WorkerRun(db_dsn, record_dir, "--processes", "2", *FAST, log=tmp_path / "worker.log")
    try:
        publish(db_dsn, "test.ok", 300)
        wait_until(lambda: counts(db_dsn) == {"done": 300}, 60, "300 done")

        def served() -> float:
            return value(
                parse(srv.client.get("/metrics").text),
                "dispatchbox_events_dispatched_total",
                event_type="test.ok",
                outcome="done",
            )

        wait_until(lambda: served() == 300, 10, "serve to show the workers' counters")
    finally:
        assert run.stop() == 0, run.log()
        assert srv.stop() == 0, srv.log()


def test_batched_outcomes_equal_one_by_one_observations() -> None:
    """The worker sums outcomes and writes them each second: same buckets, sum and count."""
    from prometheus_client import Histogram

    from dispatchbox.observability.metrics import DURATION_BUCKETS, WorkerMetrics

    metrics = WorkerMetrics(flush_interval=0)
    reference = Histogram("ref", "ref", ["event_type"], buckets=DURATION_BUCKETS, registry=None)
    seconds = [0.0, 0.005, 0.0051, 0.2, 0.25, 1, 7.5, 30, 60, 61, 1e6, 0.001] * 3
    for i, s in enumerate(seconds):
        metrics.handled("t.one" if i % 2 else "t.two", "done", s)
        reference.labels("t.one" if i % 2 else "t.two").observe(s)
    metrics.handled("t.one", "failed", 0.3)
    reference.labels("t.one").observe(0.3)
    (family,) = metrics.dispatched.collect()
    assert family.samples == [], "nothing written before a flush"
    metrics.flush()

    def samples(metric: Any, prefix: str) -> dict[tuple[str, tuple[Any, ...]], float]:
        return {
            (s.name.replace(prefix, ""), tuple(sorted(s.labels.items()))): s.value
            for family in metric.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(metrics.duration, "dispatchbox_handler_duration_seconds") == samples(
        reference, "ref"
    )
    dispatched = samples(metrics.dispatched, "dispatchbox_events_dispatched")
    assert dispatched == {
        ("_total", (("event_type", "t.one"), ("outcome", "done"))): 18,
        ("_total", (("event_type", "t.two"), ("outcome", "done"))): 18,
        ("_total", (("event_type", "t.one"), ("outcome", "failed"))): 1,
    }


COUNTER_KEY = '["dbx_test_files", "dbx_test_files_total", {}, "Files written."]'


def _write_counter_files(path: str, count: int) -> None:
    """What worker processes do when they first count: one new file each, then a value."""
    from prometheus_client.mmap_dict import MmapedDict

    for i in range(count):
        values = MmapedDict(os.path.join(path, f"counter_{100000 + i}.db"))
        values.write_value(COUNTER_KEY, 1.0, 0.0)
        values.close()


def test_a_file_not_yet_sized_is_left_out_of_the_scrape(tmp_path: Path) -> None:
    """prometheus-client creates a file empty and sizes it a moment later (or never, when its
    process is killed in between): a scrape then must still answer, with every count."""
    from prometheus_client import generate_latest

    _write_counter_files(str(tmp_path), 3)
    (tmp_path / "counter_99.db").touch()
    (tmp_path / "histogram_99.db").touch()
    text = generate_latest(build_registry(None, multiprocess_path=str(tmp_path))).decode()
    assert value(parse(text), "dbx_test_files_total") == 3


def test_scrapes_while_processes_create_their_files_never_fail(tmp_path: Path) -> None:
    """Scrape in a loop while another process creates 3,000 files: no scrape fails (before the
    fix, dozens answered 500 with struct.error) and the total never goes backwards."""
    import multiprocessing

    from prometheus_client import generate_latest

    registry = build_registry(None, multiprocess_path=str(tmp_path))
    writer = multiprocessing.get_context("spawn").Process(
        target=_write_counter_files, args=(str(tmp_path), 3000)
    )
    writer.start()
    totals = []
    try:
        while writer.is_alive():
            totals.append(value(parse(generate_latest(registry).decode()), "dbx_test_files_total"))
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert len(totals) > 10, "the scrapes must overlap the writing"
    assert totals == sorted(totals)
    assert value(parse(generate_latest(registry).decode()), "dbx_test_files_total") == 3000
