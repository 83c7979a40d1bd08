"""A worker that cannot vouch for a lease does not start the event (dispatchbox/worker/leases.py).

Two partitions made for real with a TCP proxy between one worker and PostgreSQL, while a second
worker reaches the database directly and takes over what the first one held:

- the replies are delayed past the lease while the statements arrive at once: the first
  worker's claim runs, its reply comes back when the lease ran out and the other worker may
  have taken the event over;
- the link is cut while the first worker has a queue of claimed events: its heartbeat cannot
  renew them, and it starts none whose lease might run out before its handler's timeout.

Without the lease clock the first worker runs those events anyway, after or during the other
worker's run of them.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.pg import PgServer
from tests.tcp_proxy import TcpProxy, proxy_to
from tests.worker_helpers import (
    FAST,
    counts,
    publish,
    records,
    start,
    wait_for_workers,
    wait_until,
)

pytestmark = [pytest.mark.fault, pytest.mark.slow]

LEASE = ["--lease-seconds", "3", "--handler-timeout", "2"]


def via(proxy: TcpProxy, db_dsn: str) -> str:
    dbname = conninfo.conninfo_to_dict(db_dsn)["dbname"]
    return f"host=127.0.0.1 port={proxy.port} dbname={dbname} user=postgres"


def proxied(pg_server: PgServer) -> tuple[str, int]:
    target = conninfo.conninfo_to_dict(pg_server.tcp_dsn("postgres"))
    return str(target["host"]), int(str(target["port"]))


def holder_pid(db_dsn: str, event_id: int) -> int | None:
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT split_part(locked_by, ':', 2)::int FROM outbox_event "
            "WHERE id = %s AND status = 'running'",
            [event_id],
        ).fetchone()
    return int(row[0]) if row else None


def test_a_claim_whose_reply_comes_back_after_its_lease_starts_nothing(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    with proxy_to(*proxied(pg_server)) as proxy:
        late = start(via(proxy, db_dsn), record_dir, tmp_path, "--processes", "1", *LEASE, *FAST)
        other = None
        try:
            wait_for_workers(late, 1)
            proxy.delay_replies(4.0)  # longer than the 3 s lease
            (event_id,) = publish(db_dsn, "test.chaos", 1, payload={"seconds": 0.05})
            wait_until(lambda: holder_pid(db_dsn, event_id) is not None, 30, "the claim ran")
            held_by = holder_pid(db_dsn, event_id)
            other = start(
                db_dsn, record_dir, tmp_path,
                "--processes", "1", "--reaper-interval", "0.2", *LEASE, *FAST,
            )  # fmt: skip
            wait_until(lambda: counts(db_dsn) == {"done": 1}, 60, "the other worker's delivery")
            wait_until(lambda: "claim_late" in late.log(), 30, "the late reply")
        finally:
            assert late.stop() == 0, late.log()[-3000:]
            if other is not None:
                assert other.stop() == 0, other.log()[-3000:]
    runs = [r for r in records(record_dir) if r[0] == "start"]
    assert len(runs) == 1 and runs[0][3] != held_by, runs
    assert "given_back=1" in late.log()
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT status, attempts, lease_token FROM outbox_event WHERE id = %s", [event_id]
        ).fetchone()
    assert row == ("done", 1, None), "the late worker's give-back changed the delivered event"


def test_a_worker_cut_off_stops_starting_what_it_cannot_renew(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    # One handler at a time, 0.6 s each: the 8 events claimed at once take 4.8 s, longer than
    # the 3 s lease that nothing renews once the link is cut. A handler needs its lease to hold
    # for its timeout (2 s) or half the lease (1.5 s), whichever is shorter.
    ids = publish(db_dsn, "test.chaos", 8, payload={"seconds": 0.6})
    with proxy_to(*proxied(pg_server)) as proxy:
        cut = start(
            via(proxy, db_dsn), record_dir, tmp_path,
            "--processes", "1", "--concurrency", "1", "--batch-size", "8", "--reaper-interval",
            "0", *LEASE, *FAST,
        )  # fmt: skip
        other = None
        try:
            wait_until(lambda: len(records(record_dir)) > 0, 60, "the first handler started")
            proxy.cut()
            cut_at = time.time()  # no renewal sent after this can get through
            cut_pid = records(record_dir)[0][3]
            other = start(
                db_dsn, record_dir, tmp_path,
                "--processes", "1", "--reaper-interval", "0.2", *LEASE, *FAST,
            )  # fmt: skip
            wait_until(lambda: counts(db_dsn) == {"done": 8}, 60, "the other worker's deliveries")
            wait_until(lambda: "lease_unsure" in cut.log(), 30, "the cut worker giving up")
            proxy.restore()
        finally:
            assert cut.stop() == 0, cut.log()[-3000:]
            if other is not None:
                assert other.stop() == 0, other.log()[-3000:]
    starts = {(e, p): at for kind, e, _, p, at in records(record_dir) if kind == "start"}
    ends = {(e, p): at for kind, e, _, p, at in records(record_dir) if kind == "end"}
    by_event: dict[int, list[tuple[float, float | None]]] = {}
    for (event_id, pid), at in sorted(starts.items(), key=lambda kv: kv[1]):
        by_event.setdefault(event_id, []).append((at, ends.get((event_id, pid))))
    assert set(by_event) == set(ids)
    for event_id, execs in by_event.items():
        for (_, end), (next_start, _) in itertools.pairwise(execs):
            assert end is not None and end <= next_start, f"event {event_id}: executions overlap"
    # Nothing started once less than 1.5 s of the lease could be left (0.2 s for the start line).
    on_cut = {e: at for (e, p), at in starts.items() if p == cut_pid}
    assert 1 <= len(on_cut) < 8, on_cut
    assert max(on_cut.values()) <= cut_at + 1.5 + 0.2, (max(on_cut.values()) - cut_at, on_cut)
    assert "lease_unsure" in cut.log()
