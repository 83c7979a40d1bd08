"""The latest migration applied to a database of the previous schema version holding 100,000
events while workers dispatch them: nothing lost, nothing run twice, the locks bounded and
measured (how long the migration held its locks, how long any worker waited on one)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter

import psycopg
import pytest

from dispatchbox import migrations
from tests.worker_helpers import counts, publish, wait_until

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


# The previous version's worker, as far as the schema is concerned: its claim and completion
# name only columns every version has. Today's worker cannot stand in for it: its claim reads
# columns the latest migration adds (crash_attempts), as a new version's worker would.
OLD_CLAIM = """
UPDATE outbox_event e
   SET status = 'running', attempts = e.attempts + 1, locked_by = %(worker)s,
       locked_until = now() + interval '60 seconds', lease_token = gen_random_uuid(),
       updated_at = now()
  FROM (SELECT id FROM outbox_event
         WHERE status = 'pending' AND next_attempt_at <= now()
         ORDER BY priority, next_attempt_at, id LIMIT 500 FOR UPDATE SKIP LOCKED) c
 WHERE e.id = c.id
RETURNING e.id, e.lease_token
"""
OLD_COMPLETE = """
UPDATE outbox_event e
   SET status = 'done', done_at = now(), updated_at = now(), locked_by = NULL,
       locked_until = NULL, lease_token = NULL
  FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS d (id, token)
 WHERE e.id = d.id AND e.lease_token = d.token
"""


class OldWorker(threading.Thread):
    """Claims and completes in a loop on its own connection until stopped; remembers every id it
    completed and the longest a claim or completion took."""

    def __init__(self, dsn: str, name: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.worker = dsn, name
        self.done: list[int] = []
        self.longest = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name=self.worker) as c:
                while not self.stop.is_set():
                    began = time.monotonic()
                    rows = c.execute(OLD_CLAIM, {"worker": self.worker}).fetchall()
                    if rows:
                        ids, tokens = [r[0] for r in rows], [r[1] for r in rows]
                        done = c.execute(OLD_COMPLETE, {"ids": ids, "tokens": tokens}).rowcount
                        assert done == len(ids), "a completion lost its lease"
                        self.done += ids
                    self.longest = max(self.longest, time.monotonic() - began)
                    if not rows:
                        time.sleep(0.01)
        except BaseException as exc:  # the test reports it
            self.error = exc


def test_latest_migration_on_100k_events_under_running_workers(
    empty_db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    latest = migrations.available()[-1]
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        migrations.migrate(conn, target=latest.version - 1)
    ids = publish(empty_db_dsn, "test.ok", 100_000)
    workers = [OldWorker(empty_db_dsn, f"dispatchbox-worker-old-{n}") for n in range(2)]
    for w in workers:
        w.start()
    try:
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
        for w in workers:
            w.stop.set()
            w.join(30)
    assert all(w.error is None for w in workers), [w.error for w in workers]
    assert [m.version for m in applied] == [latest.version]
    assert before < 100_000 > after, "the migration ran while events were being dispatched"
    held = float(re.findall(r"seconds=([0-9.]+)", caplog.text)[-1])
    calls = Counter(i for w in workers for i in w.done)
    assert set(calls) == set(ids) and set(calls.values()) == {1}, "each event handled once"
    worker_wait = watch.longest.get("worker", 0.0)
    pair = max(w.longest for w in workers)
    print(f"migration {latest.path.name}: locks held <= {held * 1000:.0f} ms; longest worker "
          f"lock wait {worker_wait * 1000:.0f} ms; longest claim and completion "
          f"{pair * 1000:.0f} ms; other waits {watch.longest}")  # fmt: skip
    assert held < 2.0 and worker_wait < 2.0
