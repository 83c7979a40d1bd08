"""Redrive with real worker processes: a redriven event is delivered again, keeps its history and
lineage, dies again like the first time, and a redrive racing with workers loses and duplicates
nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository, publish_many
from dispatchbox.filters import DeadEventFilter
from tests.worker_helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration.redrive_app:dispatcher"
FAST = ["--backoff-base", "0.02", "--backoff-max", "0.1", "--poll-interval", "0.2"]


@pytest.fixture
def record_dir(tmp_path: Path) -> Path:
    d = tmp_path / "calls"
    d.mkdir()
    return d


@pytest.fixture
def worker(db_dsn: str, record_dir: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(DISPATCHBOX_DSN=db_dsn, DBX_RECORD_DIR=str(record_dir))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dispatchbox",
                "worker",
                "--app",
                APP,
                "--processes",
                "2",
                "--concurrency",
                "8",
                *FAST,
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    assert code == 0, log.read_text(errors="replace")


def publish(dsn: str, n: int, *, max_attempts: int) -> list[int]:
    events = [
        {
            "aggregate_type": "order",
            "aggregate_id": str(i),
            "event_type": "redrive.flaky",
            "payload": {"i": i},
            "max_attempts": max_attempts,
        }
        for i in range(n)
    ]
    with psycopg.connect(dsn) as conn:
        ids = publish_many(conn, events)
        conn.commit()
    return ids


def calls(record_dir: Path) -> list[tuple[str, int]]:
    out = []
    for path in record_dir.glob("calls-*.log"):
        for line in path.read_text().splitlines():
            kind, event_id, _attempts, _pid = line.split()
            out.append((kind, int(event_id)))
    return out


def rows(dsn: str) -> dict[int, dict[str, Any]]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT e.*, (SELECT count(*) FROM outbox_event_error r WHERE r.event_id = e.id) "
            "AS errors FROM outbox_event e"
        )
        names = [c.name for c in cur.description or []]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def statuses(dsn: str) -> Counter[str]:
    return Counter(r["status"] for r in rows(dsn).values())


@pytest.mark.slow
def test_a_redriven_event_is_dispatched_again_and_keeps_its_history(
    db_dsn: str, record_dir: Path, worker: subprocess.Popen[bytes]
) -> None:
    repo = OutboxRepository(db_dsn)
    ids = publish(db_dsn, 5, max_attempts=2)
    wait_until(lambda: statuses(db_dsn) == {"dead": 5}, 60, "five events dead")
    first = rows(db_dsn)
    assert all(first[i]["errors"] == 2 and first[i]["attempts"] == 2 for i in ids)

    # Redriven while the downstream is still down: delivered again, dead again like the first
    # time, lineage counted, the first life's errors still there.
    assert repo.retry_dead_events_batch(ids[:2], actor="ops") == 2
    wait_until(
        lambda: all(
            r["status"] == "dead" and r["redrive_count"] == 1
            for i, r in rows(db_dsn).items()
            if i in ids[:2]
        ),
        60,
        "the two redriven events dead again",
    )
    again = rows(db_dsn)
    for i in ids[:2]:
        assert again[i]["errors"] == 4 and again[i]["attempts"] == 2
        assert again[i]["dead_at"] > first[i]["dead_at"]
        assert again[i]["last_redriven_by"] == "ops"
        assert again[i]["last_error"] == f"ConnectionError: downstream refused order {ids.index(i)}"
    assert repo.count_dead_events() == 5
    stats = repo.dead_event_stats(by=["error"])
    assert stats.by_error is not None and [g.count for g in stats.by_error] == [5]

    # The downstream recovers: a redrive by filter delivers every one of them, once.
    (record_dir / "healthy").touch()
    assert repo.retry_dead_events(DeadEventFilter(event_type="redrive.flaky"), actor="ops") == 5
    wait_until(lambda: statuses(db_dsn) == {"done": 5}, 60, "five events done")
    final = rows(db_dsn)
    oks = Counter(i for kind, i in calls(record_dir) if kind == "ok")
    fails = Counter(i for kind, i in calls(record_dir) if kind == "fail")
    assert oks == dict.fromkeys(ids, 1)
    for i in ids:
        assert final[i]["errors"] == fails[i] == (4 if i in ids[:2] else 2)
        assert final[i]["redrive_count"] == (2 if i in ids[:2] else 1)
        assert final[i]["last_error"] is not None  # history, not erased by success
    assert repo.count_dead_events() == 0


@pytest.mark.slow
def test_redrive_racing_with_workers_loses_and_duplicates_nothing(
    db_dsn: str, record_dir: Path, worker: subprocess.Popen[bytes]
) -> None:
    max_attempts = 2
    ids = publish(db_dsn, 600, max_attempts=max_attempts)
    repo = OutboxRepository(db_dsn, batch_size=25)
    stop = threading.Event()
    errors: list[BaseException] = []

    def redrive_forever() -> None:
        # Redrive whatever is dead, over and over, while the workers claim, fail and kill
        # events under it.
        try:
            while not stop.is_set():
                repo.retry_dead_events(None, actor="racer")
                time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    racer = threading.Thread(target=redrive_forever)
    racer.start()
    try:
        # Until the race has really happened: the redrives add up to one an event, and some
        # events were redriven, failed, died and were redriven again (how soon depends on the
        # machine's pace, so it is waited for, not assumed).
        def raced() -> bool:
            counts = [r["redrive_count"] for r in rows(db_dsn).values()]
            return sum(counts) >= 600 and max(counts) >= 2

        wait_until(raced, 120, "redrives racing with the workers")
        (record_dir / "healthy").touch()
        wait_until(lambda: statuses(db_dsn) == {"done": 600}, 180, "all 600 events done")
    finally:
        stop.set()
        racer.join(60)
    assert not errors, errors

    final = rows(db_dsn)
    oks = Counter(i for kind, i in calls(record_dir) if kind == "ok")
    fails = Counter(i for kind, i in calls(record_dir) if kind == "fail")
    assert oks == dict.fromkeys(ids, 1), "an event was delivered twice, or never"
    # the race really happened: events died, were redriven and died again
    assert max(r["redrive_count"] for r in final.values()) >= 2
    for i in ids:
        row = final[i]
        # every failed call is in the history (nothing lost across redrives)
        assert row["errors"] == fails[i]
        # a redrive only ever took a dead event: each earlier life ended after max_attempts
        # failures, and the last one succeeded before reaching it
        lives = row["redrive_count"]
        assert lives * max_attempts <= fails[i] < (lives + 1) * max_attempts, row
    with psycopg.connect(db_dsn) as conn:
        audited = conn.execute(
            "SELECT coalesce(sum(affected), 0), count(*) FILTER (WHERE outcome <> 'completed') "
            "FROM outbox_dead_letter_audit WHERE action = 'retry_filter'"
        ).fetchone()
    assert audited == (sum(r["redrive_count"] for r in final.values()), 0)
