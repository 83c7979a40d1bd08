"""Faults made for real against real worker processes: kill -9 in a loop, a worker frozen past
its lease, the database's side of the connections terminated, the network to the database cut.

Every test ends with every event done, each handled at least once, and any repeat explained by
the fault; executions of one event never overlap in time. Each is bounded and stops by itself.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.pg import PgServer
from tests.tcp_proxy import proxy_to
from tests.worker_helpers import (
    FAST,
    WorkerRun,
    counts,
    publish,
    records,
    start,
    wait_for_workers,
    wait_until,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow]


def worker_pids(run: WorkerRun) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{run.proc.pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


Execution = tuple[int, float, float | None]  # (pid, start, end or None if it never ended)


def executions(record_dir: Path) -> dict[int, list[Execution]]:
    """Each event's handler executions, from the start and end lines of test.chaos."""
    started: dict[tuple[int, int, int], float] = {}
    ended: dict[tuple[int, int, int], float] = {}
    for kind, event_id, attempts, pid, at in records(record_dir):
        key = (event_id, attempts, pid)
        (started if kind == "start" else ended)[key] = at
    out: dict[int, list[Execution]] = defaultdict(list)
    for (event_id, _, pid), at in sorted(started.items(), key=lambda kv: kv[1]):
        out[event_id].append((pid, at, ended.get((event_id, _, pid))))
    return out


def assert_each_once_or_explained(
    record_dir: Path, ids: list[int], killed: dict[int, float]
) -> int:
    """Every event handled to its end at least once; an execution that was repeated was cut by a
    kill (or frozen: `killed` maps such pids to when they stopped); no two overlap. Returns the
    number of repeats."""
    runs = executions(record_dir)
    assert set(runs) == set(ids), "an event was never handled"
    repeats = 0
    for event_id, execs in runs.items():
        assert any(end is not None for _, _, end in execs), f"event {event_id} never finished"
        for (pid, _, end), (_, next_start, _) in itertools.pairwise(execs):
            repeats += 1
            assert pid in killed, f"event {event_id} ran again after pid {pid}, which was not cut"
            # The earlier execution ended (or was cut) before the next one began.
            finished = end if end is not None else killed[pid]
            assert finished <= next_start, f"event {event_id}: executions overlap"
    return repeats


def test_kill_9_every_second_or_two_loses_nothing(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    # 5 ms a handler, 16 at a time: some 20 s of work, long enough for a dozen kills.
    # A kill costs no attempt (a crash attempt instead), and random kills of healthy handlers
    # are not poison: --max-crashes 0 never gives up on crashes, so none may go dead.
    ids = publish(db_dsn, "test.chaos", 50_000, payload={"seconds": 0.005}, max_attempts=1)
    run = start(
        db_dsn, record_dir, tmp_path,
        "--processes", "4", "--batch-size", "100", "--concurrency", "4",
        "--lease-seconds", "3", "--handler-timeout", "2", "--reaper-interval", "0.5",
        "--max-crashes", "0", *FAST,
    )  # fmt: skip
    killed: dict[int, float] = {}
    rng = random.Random(20261204)
    try:
        wait_for_workers(run, 4)
        chaos_until = time.monotonic() + 90  # then let the last leases run out
        while counts(db_dsn)["done"] < 50_000 and time.monotonic() < chaos_until:
            time.sleep(rng.uniform(1.0, 2.0))
            alive = [p for p in worker_pids(run) if p not in killed]
            if alive:
                victim = rng.choice(alive)
                killed[victim] = time.time()
                os.kill(victim, signal.SIGKILL)
        wait_until(lambda: counts(db_dsn) == {"done": 50_000}, 180, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    assert len(killed) >= 10, f"only {len(killed)} kills: the chaos did not really happen"
    repeats = assert_each_once_or_explained(record_dir, ids, killed)
    with psycopg.connect(db_dsn) as conn:
        reaped = conn.execute(
            "SELECT count(*) FROM outbox_event_error WHERE error_type = 'LeaseExpired'"
        ).fetchone()
        stuck = conn.execute(
            "SELECT count(*) FROM outbox_event WHERE status <> 'done' OR lease_token IS NOT NULL"
        ).fetchone()
    assert stuck == (0,)
    assert reaped is not None and reaped[0] >= 1, "no lease was taken over from a killed process"
    print(f"kills={len(killed)} repeats={repeats} lease_expired={reaped[0]}")


def test_a_frozen_worker_cannot_complete_what_another_took_over(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    (event_id,) = publish(db_dsn, "test.slow", 1, payload={"seconds": 2, "first_only": True})
    run = start(
        db_dsn, record_dir, tmp_path,
        "--processes", "2", "--lease-seconds", "2", "--handler-timeout", "1.9",
        "--reaper-interval", "0.3", *FAST,
    )  # fmt: skip
    try:
        wait_until(lambda: len(records(record_dir)) == 1, 30, "the first execution started")
        frozen = records(record_dir)[0][3]
        os.kill(frozen, signal.SIGSTOP)  # past its lease, heartbeat and watchdog included
        try:
            wait_until(lambda: counts(db_dsn) == {"done": 1}, 60, "the other process took over")
            with psycopg.connect(db_dsn) as conn:
                before = conn.execute(
                    "SELECT status, attempts, done_at, locked_by FROM outbox_event WHERE id = %s",
                    [event_id],
                ).fetchone()
        finally:
            os.kill(frozen, signal.SIGCONT)
        # The frozen process wakes, finishes its handler and tries to record it: its lease token
        # is stale, so nothing changes.
        wait_until(
            lambda: sum(1 for r in records(record_dir) if r[0] == "end" and r[3] == frozen) == 1,
            30,
            "the frozen execution finished",
        )
        time.sleep(1)  # its completion (or timeout) written or refused by now
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    with psycopg.connect(db_dsn) as conn:
        after = conn.execute(
            "SELECT status, attempts, done_at, locked_by FROM outbox_event WHERE id = %s",
            [event_id],
        ).fetchone()
        errors = conn.execute(
            "SELECT attempt, error_type FROM outbox_event_error WHERE event_id = %s", [event_id]
        ).fetchall()
    # The lost lease is a crash attempt, not an error attempt: the delivery is attempt 1.
    assert before is not None and before[0] == "done" and before[1] == 1
    assert after == before, "the stale completion changed the event"
    assert errors == [(1, "LeaseExpired")]
    ends = [r for r in records(record_dir) if r[0] == "end"]
    assert {r[3] for r in ends} == {frozen, next(r[3] for r in ends if r[3] != frozen)}


def test_terminated_connections_are_reopened_and_nothing_is_lost(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ids = publish(db_dsn, "test.chaos", 6000, payload={"seconds": 0.002})
    run = start(
        db_dsn, record_dir, tmp_path, "--processes", "2", "--lease-seconds", "5",
        "--handler-timeout", "4", *FAST,
    )  # fmt: skip
    terminated = 0
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 500, 60, "some progress")
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            for _ in range(3):
                row = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() "
                    "AND application_name LIKE 'dispatchbox-worker-%%'"
                ).fetchone()
                terminated += row[0] if row else 0
                time.sleep(0.5)
        wait_until(lambda: counts(db_dsn) == {"done": 6000}, 120, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    assert terminated >= 4, "the workers' connections were not there to terminate"
    assert_each_once_or_explained(record_dir, ids, {})  # no process died: no repeat at all
    assert "database_unreachable" in run.log() and "database_reachable" in run.log()
    assert "worker_process_died" not in run.log(), "recovered without a restart"


def test_the_network_to_the_database_cut_for_ten_seconds(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    target = conninfo.conninfo_to_dict(pg_server.tcp_dsn("postgres"))
    dbname = conninfo.conninfo_to_dict(db_dsn)["dbname"]
    ids = publish(db_dsn, "test.chaos", 6000, payload={"seconds": 0.002})
    with proxy_to(str(target["host"]), int(str(target["port"]))) as proxy:
        via_proxy = f"host=127.0.0.1 port={proxy.port} dbname={dbname} user=postgres"
        run = start(
            via_proxy, record_dir, tmp_path,
            "--processes", "2", "--lease-seconds", "30", "--handler-timeout", "5", *FAST,
        )  # fmt: skip
        try:
            wait_until(lambda: counts(db_dsn)["done"] >= 500, 60, "some progress")
            proxy.cut()
            cut_at = counts(db_dsn)["done"]
            time.sleep(10)
            during = counts(db_dsn)["done"]
            proxy.restore()
            wait_until(lambda: counts(db_dsn) == {"done": 6000}, 120, "every event done")
        finally:
            assert run.stop() == 0, run.log()[-3000:]
    # Nothing completes through a cut network (a flush in flight may land as it is cut).
    assert during - cut_at <= 200, (cut_at, during)
    assert_each_once_or_explained(record_dir, ids, {})
    log = run.log()
    assert "database_unreachable" in log and "database_reachable" in log
    assert "worker_process_died" not in log


def test_poison_handlers_end_as_clear_dead_events(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    kinds = ["ok", "raise", "hang", "bytes"]
    ids = {
        kind: publish(db_dsn, "test.poison", 3, payload={"kind": kind}, max_attempts=2)
        for kind in kinds
    }
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 3, "dead": 9}, 60, "every event final")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    rows = final_errors(db_dsn)
    expected = {
        "ok": ("done", None),
        "raise": ("dead", "ValueError"),
        "hang": ("dead", "HandlerTimeout"),
        "bytes": ("dead", "RuntimeError"),
    }
    for kind, (status, error_type) in expected.items():
        for event_id in ids[kind]:
            assert rows[event_id][:2] == (status, error_type), (kind, rows[event_id])
    for event_id in ids["bytes"]:
        message = rows[event_id][2]
        assert message is not None and message.startswith("RuntimeError: ")
        assert "upstream said" in message, "what could be read was kept"
        assert len(message) <= 2100, "the error message is bounded"
    log = run.log()
    assert "flush_failed" not in log and "worker_process_died" not in log


def test_a_handler_that_kills_its_process_is_poison_after_three_crashes_and_the_rest_delivered(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    # Real processes really die (os._exit in the handler). A crash is a crash attempt, not an
    # error attempt: the poison events go dead as "Poison" after --max-crashes 3 although
    # max_attempts is 50, and the events the dying processes held besides them (claimed, maybe
    # started) lose no attempt and are all delivered.
    fatal = publish(db_dsn, "test.poison", 2, payload={"kind": "exit"}, max_attempts=50)
    fine = publish(db_dsn, "test.poison", 20, payload={"kind": "ok"}, max_attempts=1)
    run = start(
        db_dsn, record_dir, tmp_path,
        "--processes", "2", "--lease-seconds", "2", "--handler-timeout", "1.5",
        "--reaper-interval", "0.3", "--max-crashes", "3", "--crash-backoff", "0.2", *FAST,
    )  # fmt: skip
    try:
        wait_until(lambda: counts(db_dsn) == {"done": 20, "dead": 2}, 120, "every event final")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    rows = final_errors(db_dsn)
    assert all(rows[i][:2] == ("dead", "Poison") for i in fatal), rows
    assert all((rows[i][2] or "").startswith("Poison: ") for i in fatal), rows
    assert all(rows[i][0] == "done" for i in fine), "max_attempts 1: no crash cost an attempt"
    with psycopg.connect(db_dsn) as conn:
        crashes = dict(
            conn.execute(
                "SELECT id, crash_attempts FROM outbox_event WHERE id = ANY(%s)", [fatal]
            ).fetchall()
        )
        attempts = conn.execute(
            "SELECT max(attempts) FROM outbox_event WHERE id = ANY(%s)", [fatal]
        ).fetchone()
    assert set(crashes.values()) == {3}, crashes
    assert attempts == (0,), "the poison events spent no error attempt"
    assert "worker_process_died slot=" in run.log(), "the supervisor restarted the process"


def final_errors(dsn: str) -> dict[int, tuple[str, str | None, str | None]]:
    """Each event's status, its last recorded error type and its last_error."""
    with psycopg.connect(dsn) as conn:
        return {
            event_id: (status, error_type, message)
            for event_id, status, error_type, message in conn.execute(
                "SELECT e.id, e.status, r.error_type, e.last_error FROM outbox_event e "
                "LEFT JOIN LATERAL (SELECT error_type FROM outbox_event_error "
                "WHERE event_id = e.id ORDER BY id DESC LIMIT 1) r ON true"
            ).fetchall()
        }


def test_statement_timeouts_are_ridden_out_like_an_outage(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ids = publish(db_dsn, "test.chaos", 6000, payload={"seconds": 0.002})
    dbname = conninfo.conninfo_to_dict(db_dsn)["dbname"]
    run = start(db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_until(lambda: counts(db_dsn)["done"] >= 500, 60, "some progress")
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            # Every new session of the workers' database cancels its statements after 1 ms;
            # the workers' sessions are ended so that they reconnect into it.
            admin.execute(f'ALTER DATABASE "{dbname}" SET statement_timeout = 1')
            try:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() "
                    "AND application_name LIKE 'dispatchbox-worker-%%'"
                )
                time.sleep(3)
            finally:
                admin.execute(f'ALTER DATABASE "{dbname}" RESET statement_timeout')
        wait_until(lambda: counts(db_dsn) == {"done": 6000}, 120, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    assert_each_once_or_explained(record_dir, ids, {})
    log = run.log()
    # One outage per process, logged once: it lasted while every statement was cancelled.
    outages = [float(s) for s in re.findall(r"database_reachable .*outage_seconds=([0-9.]+)", log)]
    assert outages and min(outages) >= 2.5, outages
    assert "worker_process_died" not in log


def test_eight_processes_on_the_same_rows_never_run_one_event_twice(
    db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    flags = ["--processes", "4", "--batch-size", "50", "--concurrency", "2", *FAST]
    # Two supervisors, as two hosts would run them.
    runs = [start(db_dsn, record_dir, tmp_path, *flags) for _ in range(2)]
    try:
        for run in runs:
            wait_for_workers(run, 4)
        # 2 ms a handler, 16 at a time: seconds of work for every process to claim from.
        ids = publish(db_dsn, "test.chaos", 10_000, payload={"seconds": 0.002})
        wait_until(lambda: counts(db_dsn) == {"done": 10_000}, 120, "every event done")
    finally:
        for run in runs:
            assert run.stop() == 0, run.log()[-3000:]
    assert_each_once_or_explained(record_dir, ids, {})
    assert all(len(execs) == 1 for execs in executions(record_dir).values())
    assert len({r[3] for r in records(record_dir)}) >= 6, "most of the eight processes took work"


def test_two_operators_redriving_one_filter_redrive_each_event_once(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, "
            "attempts, max_attempts, last_error, last_error_at, dead_at) "
            "SELECT 'order', g::text, 'race.event', '{}', 'dead', 5, 5, 'KeyError: order ' || g, "
            "now(), now() FROM generate_series(1, 20000) g"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPATCHBOX_DSN", "DATABASE_URL")}
    env["DISPATCHBOX_DSN"] = db_dsn
    command = [sys.executable, "-m", "dispatchbox", "dead-events", "retry-batch"]
    # Paced, so that the second operator starts while the first is a few seconds from done.
    command += ["--all-matching", "--event-type", "race.event", "--rate", "4000", "--yes"]

    def operator() -> subprocess.Popen[str]:
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first = operator()
    wait_until(lambda: counts(db_dsn)["pending"] > 0, 60, "the first redrive under way")
    operators = [first, operator()]
    outputs = [op.communicate(timeout=120) for op in operators]
    assert [op.returncode for op in operators] == [0, 0], outputs
    counts_said = [re.search(r"retried ([\d,]+)", out) for out, _ in outputs]
    assert all(counts_said), outputs
    retried = [int(m.group(1).replace(",", "")) for m in counts_said if m]
    with psycopg.connect(db_dsn) as conn:
        per_event = conn.execute(
            "SELECT redrive_count, count(*) FROM outbox_event GROUP BY 1"
        ).fetchall()
        audited = conn.execute(
            "SELECT count(*), sum(affected) FROM outbox_dead_letter_audit "
            "WHERE action = 'retry_filter'"
        ).fetchone()
    assert per_event == [(1, 20000)], "an event was redriven twice, or not at all"
    assert sum(retried) == 20000 and min(retried) > 0, retried  # both really took part
    assert audited == (2, 20000)
