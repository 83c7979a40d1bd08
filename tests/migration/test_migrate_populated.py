"""The latest migration applied to a database of the previous schema version holding 100,000
events while workers dispatch them: nothing lost, nothing run twice, the locks bounded and
measured (how long the migration held its locks, how long any worker waited on one)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from dispatchbox import migrations
from tests.worker_helpers import FAST, counts, publish, records, start, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow]


class LockWatch:
    """Polls pg_stat_activity every few ms: the longest time any backend of the database was
    seen waiting on a lock (heavyweight lock waits only: wait_event_type 'Lock')."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.longest: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        waiting_since: dict[int, float] = {}
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                now = time.monotonic()
                rows = conn.execute(
                    "SELECT pid, application_name FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchall()
                seen = set()
                for pid, app in rows:
                    seen.add(pid)
                    since = waiting_since.setdefault(pid, now)
                    who = "worker" if str(app).startswith("dispatchbox-worker") else "other"
                    self.longest[who] = max(self.longest.get(who, 0.0), now - since)
                for pid in set(waiting_since) - seen:
                    del waiting_since[pid]
                time.sleep(0.002)


def test_latest_migration_on_100k_events_under_running_workers(
    empty_db_dsn: str, record_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    latest = migrations.available()[-1]
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        migrations.migrate(conn, target=latest.version - 1)
    ids = publish(empty_db_dsn, "test.ok", 100_000)
    # Workers running through the migration. A worker refuses to start on a schema older than
    # its own, so the latest version is marked applied while they start and unmarked before the
    # real migration: their SQL needs nothing the latest migration adds, as a previous
    # version's workers would not.
    mark = "INSERT INTO dispatchbox_schema_version (version, name) VALUES (%s, %s)"
    with psycopg.connect(empty_db_dsn) as conn:
        conn.execute(mark, [latest.version, latest.name])
    run = start(empty_db_dsn, record_dir, tmp_path, "--processes", "2", *FAST)
    try:
        wait_until(lambda: "worker_started" in run.log(), 60, "the workers started")
        with psycopg.connect(empty_db_dsn) as conn:
            conn.execute("DELETE FROM dispatchbox_schema_version WHERE version = %s",
                         [latest.version])  # fmt: skip
        wait_until(lambda: counts(empty_db_dsn)["done"] >= 10_000, 120, "workers under way")
        with (
            LockWatch(empty_db_dsn) as watch,
            psycopg.connect(empty_db_dsn, autocommit=True) as conn,
            caplog.at_level(logging.INFO, logger="dispatchbox.migrations"),
        ):
            before = counts(empty_db_dsn)["done"]
            applied = migrations.migrate(conn, lock_timeout=5)
            after = counts(empty_db_dsn)["done"]
            time.sleep(0.2)  # a wait that began at the commit is seen ending
        wait_until(lambda: counts(empty_db_dsn) == {"done": 100_000}, 300, "every event done")
    finally:
        assert run.stop() == 0, run.log()[-3000:]
    assert [m.version for m in applied] == [latest.version]
    assert before < 100_000 > after, "the migration ran while events were being dispatched"
    held = float(re.findall(r"seconds=([0-9.]+)", caplog.text)[-1])
    calls = Counter(r[1] for r in records(record_dir))
    assert set(calls) == set(ids) and set(calls.values()) == {1}, "each event handled once"
    assert "worker_process_died" not in run.log()
    worker_wait = watch.longest.get("worker", 0.0)
    print(f"migration {latest.path.name}: locks held <= {held * 1000:.0f} ms; longest worker "
          f"lock wait {worker_wait * 1000:.0f} ms; other waits {watch.longest}")  # fmt: skip
    assert held < 2.0 and worker_wait < 2.0
