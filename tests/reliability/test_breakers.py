"""Circuit breakers, replay and rate limits with real worker processes (tests/breaker_app.py).

The outage is real as far as the handler can tell: while a control file exists, the ledger's
handler and health check get ConnectionRefusedError, in every worker process at once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.worker_helpers import FAST, WorkerRun, publish, records, wait_for_workers, wait_until

pytestmark = [pytest.mark.slow]

APP = "tests.breaker_app:dispatcher"
OPEN = ("open", "half_open")


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "control"
    d.mkdir()
    monkeypatch.setenv("DBX_CONTROL_DIR", str(d))
    monkeypatch.setenv("DBX_COOLDOWN", "1")
    return d


def worker(dsn: str, record_dir: Path, tmp_path: Path, processes: int = 2) -> WorkerRun:
    run = WorkerRun(
        dsn,
        record_dir,
        "--app",  # the last --app wins: this one, not worker_helpers' default
        APP,
        "--processes",
        str(processes),
        "--concurrency",
        "4",
        "--batch-size",
        "50",
        *FAST,
        log=tmp_path / f"worker-{time.time_ns()}.log",
    )
    return run


def breaker(dsn: str, name: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT state, manual, opened_at, transitions FROM outbox_breaker "
            "WHERE destination = %s",
            [name],
        )
        row = cur.fetchone()
    if row is None:  # the workers create it as they start
        return {"state": "missing", "manual": False, "opened_at": None, "transitions": 0}
    return dict(zip(("state", "manual", "opened_at", "transitions"), row, strict=True))


def by_status(dsn: str, event_type: str) -> Counter[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM outbox_event WHERE event_type = %s GROUP BY 1",
            [event_type],
        ).fetchall()
    return Counter({s: n for s, n in rows})


def attempts_of(dsn: str, event_type: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT COALESCE(sum(attempts), 0) FROM outbox_event WHERE event_type = %s",
            [event_type],
        ).fetchone()
    return int(row[0]) if row else 0


def test_outage_opens_the_breaker_others_flow_recovery_closes_and_replays(
    db_dsn: str, record_dir: Path, tmp_path: Path, control: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBX_HEALTH_CHECK", "1")
    (control / "ledger.down").touch()
    run = worker(db_dsn, record_dir, tmp_path)
    try:
        wait_for_workers(run, 2)
        # A permanent death is the event's fault: not counted by the breaker, never replayed.
        bad = publish(db_dsn, "ledger.bad", 3)
        wait_until(lambda: by_status(db_dsn, "ledger.bad")["dead"] == 3, 30, "bad ones dead")
        assert breaker(db_dsn, "ledger")["state"] == "closed"
        # Events that die at their first failure (max_attempts=1): the outage kills the first
        # few before the breaker opens (at least the 5 that open it); the rest wait, and the
        # recovery replays the dead ones.
        doomed = publish(db_dsn, "ledger.post", 20, max_attempts=1)
        wait_until(lambda: breaker(db_dsn, "ledger")["state"] in OPEN, 30, "ledger opens")
        died = by_status(db_dsn, "ledger.post")["dead"]
        assert 5 <= died < 20
        # While it is open: new ledger events stay pending with their attempts untouched, and
        # the other destinations keep flowing.
        ledger = publish(db_dsn, "ledger.post", 200)
        t0 = time.monotonic()
        mail = publish(db_dsn, "mail.send", 2000)
        audit = publish(db_dsn, "audit.log", 500)
        wait_until(lambda: by_status(db_dsn, "mail.send")["done"] == 2000, 60, "mail delivered")
        wait_until(lambda: by_status(db_dsn, "audit.log")["done"] == 500, 60, "audit delivered")
        flowing = time.monotonic() - t0
        assert by_status(db_dsn, "ledger.post")["pending"] == 200 + 20 - died
        before = attempts_of(db_dsn, "ledger.post")
        # Several cool-downs (1 s, doubling to 4 s) pass with failing health checks...
        wait_until(
            lambda: breaker(db_dsn, "ledger")["transitions"] >= 5, 30, "probes fail, re-open"
        )
        # ...and no event spent an attempt: the health check is the probe.
        assert attempts_of(db_dsn, "ledger.post") == before
        assert by_status(db_dsn, "ledger.post")["pending"] == 200 + 20 - died
        print(
            f"\noutage: 2,500 events of mail and audit delivered in {flowing:.2f}s "
            f"({2500 / flowing:,.0f}/s) while ledger's {220 - died} stayed pending, attempts "
            f"{before}"
        )
        # Recovery: the next probe closes the breaker; the pending events and the replayed
        # outage deaths are delivered; the permanent deaths stay dead.
        (control / "ledger.down").unlink()
        recovered = time.monotonic()
        wait_until(lambda: breaker(db_dsn, "ledger")["state"] == "closed", 30, "ledger closes")
        wait_until(lambda: by_status(db_dsn, "ledger.post")["done"] == 220, 60, "ledger delivered")
        print(f"recovery to all 220 ledger events done: {time.monotonic() - recovered:.2f}s")
        assert by_status(db_dsn, "ledger.bad") == Counter({"dead": 3})

        def replay_audit() -> list[tuple[Any, ...]]:
            with psycopg.connect(db_dsn) as conn:
                return conn.execute(
                    "SELECT actor, affected, outcome FROM outbox_dead_letter_audit "
                    "WHERE action = 'replay'"
                ).fetchall()

        # The replay finishes its audit entry after its last (paced) page, which can come after
        # the replayed events are delivered: wait for it to finish, then check what it says.
        wait_until(
            lambda: [r[2] for r in replay_audit()] == ["completed"], 30, "the replay's audit"
        )
        assert replay_audit() == [("breaker:ledger", died, "completed")]
    finally:
        code = run.stop()
    assert code == 0, run.log()[-3000:]
    delivered = Counter(i for kind, i, *_ in records(record_dir) if kind == "call")
    assert all(delivered[i] >= 1 for i in doomed + ledger + mail + audit + bad)


def test_without_a_health_check_one_event_is_the_probe(
    db_dsn: str, record_dir: Path, tmp_path: Path, control: Path
) -> None:
    (control / "ledger.down").touch()
    run = worker(db_dsn, record_dir, tmp_path, processes=2)
    try:
        wait_for_workers(run, 2)
        publish(db_dsn, "ledger.post", 100, max_attempts=50)
        # From the first probe on (a cool-down after the opening: the failures in flight when
        # it opened are long written), each half-open period sends one probe event, which
        # fails: at most one attempt per probe.
        wait_until(lambda: breaker(db_dsn, "ledger")["transitions"] >= 2, 30, "first probe")
        first = breaker(db_dsn, "ledger")["transitions"]
        opened_attempts = attempts_of(db_dsn, "ledger.post")
        wait_until(
            lambda: breaker(db_dsn, "ledger")["transitions"] >= first + 4, 30, "two more probes"
        )
        probes = (breaker(db_dsn, "ledger")["transitions"] - first) // 2 + 1
        assert attempts_of(db_dsn, "ledger.post") - opened_attempts <= probes
        (control / "ledger.down").unlink()
        wait_until(lambda: by_status(db_dsn, "ledger.post")["done"] == 100, 60, "all delivered")
        assert breaker(db_dsn, "ledger")["state"] == "closed"
    finally:
        code = run.stop()
    assert code == 0, run.log()[-3000:]


def test_rate_limit_holds_across_four_processes(
    db_dsn: str, record_dir: Path, tmp_path: Path, control: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rate = 200.0
    monkeypatch.setenv("DBX_RATE", str(rate))
    monkeypatch.setenv("DBX_BURST", "10")
    run = worker(db_dsn, record_dir, tmp_path, processes=4)
    try:
        wait_for_workers(run, 4)
        publish(db_dsn, "metered.send", 3000)
        wait_until(lambda: by_status(db_dsn, "metered.send")["done"] == 3000, 60, "all metered")
    finally:
        code = run.stop()
    assert code == 0, run.log()[-3000:]
    calls = sorted(at for kind, _, _, _, at in records(record_dir) if kind == "call")
    pids = {pid for kind, _, _, pid, _ in records(record_dir) if kind == "call"}
    assert len(pids) == 4, "every process took a share"
    # The burst (10) is spent at once; from then on the bucket sets the pace.
    measured = (len(calls) - 11) / (calls[-1] - calls[10])
    print(f"\nrate limit {rate:g}/s, 4 processes: {measured:.1f}/s over {len(calls)} events")
    assert abs(measured - rate) / rate <= 0.10


def test_an_operator_opens_and_closes_a_breaker_under_running_workers(
    db_dsn: str, record_dir: Path, tmp_path: Path, control: Path
) -> None:
    from tests.conftest import run_cli

    run = worker(db_dsn, record_dir, tmp_path)
    try:
        wait_for_workers(run, 2)
        wait_until(lambda: breaker(db_dsn, "ledger")["state"] == "closed", 30, "the breaker row")
        opened = run_cli("breakers", "open", "ledger", dsn=db_dsn)
        assert opened.code == 0, opened.stderr
        # Each process reads the shared state every half second: publish once both have seen
        # the breaker open (a process that claims before it has, delivers, as it should).
        wait_until(
            lambda: run.log().count("breaker_seen destination=ledger state=open") >= 2,
            30,
            "both processes see the breaker open",
        )
        ledger = publish(db_dsn, "ledger.post", 50)
        publish(db_dsn, "mail.send", 200)
        wait_until(lambda: by_status(db_dsn, "mail.send")["done"] == 200, 60, "mail flows")
        # Several cool-downs (1 s) pass: a breaker opened by hand is never probed.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert breaker(db_dsn, "ledger")["state"] == "open"
            time.sleep(0.2)
        assert by_status(db_dsn, "ledger.post") == Counter({"pending": 50})
        assert attempts_of(db_dsn, "ledger.post") == 0
        closed = run_cli("breakers", "close", "ledger", dsn=db_dsn)
        assert closed.code == 0, closed.stderr
        wait_until(lambda: by_status(db_dsn, "ledger.post")["done"] == 50, 60, "ledger delivered")
        # A close is a recovery: ledger replays its outage's deaths (none: nothing died).
        wait_until(
            lambda: ("replay", 0, "completed") in audit_trail(db_dsn), 30, "the replay, audited"
        )
    finally:
        code = run.stop()
    assert code == 0, run.log()[-3000:]
    assert audit_trail(db_dsn) == [
        ("breaker_open", 1, "completed"),
        ("breaker_close", 1, "completed"),
        ("replay", 0, "completed"),
    ]
    assert {i for kind, i, *_ in records(record_dir) if kind == "call"} >= set(ledger)


def audit_trail(dsn: str) -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT action, affected, outcome FROM outbox_dead_letter_audit ORDER BY id"
        ).fetchall()
    return [(a, n, o) for a, n, o in rows]
