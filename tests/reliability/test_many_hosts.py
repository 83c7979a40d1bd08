"""Three hosts against one PostgreSQL, one of them cut off mid-run (tests/netns.py).

Each host is a network namespace joined to this one by a veth pair; its `dispatchbox worker`
reaches the suite's PostgreSQL over that link only. Cutting the link (ip link set ... down) is a
network fault between machines: the cut host keeps running, unable to complete what it holds;
the other hosts' reapers take its leases back once they expire and deliver those events. The
same guarantees as on one host: nothing lost, executions of one event never overlap, and every
repeat is an execution the cut host could not report.
"""

from __future__ import annotations

import itertools
import re
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import conninfo

from tests.netns import Host, admitted, hosts, leftovers, unavailable
from tests.pg import PgServer, skip_outside_ci
from tests.worker_helpers import FAST, WorkerRun, counts, publish, records, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.slow]

EVENTS = 6000
LEASE = 5.0

# host index -> its executions: (event id, pid, start, end or None)
Execution = tuple[int, int, float, float | None]


def host_executions(record_dir: Path) -> list[tuple[int, Execution]]:
    """Every handler execution, with the host that ran it, from each host's record folder."""
    out = []
    for folder in sorted(record_dir.glob("host*")):
        index = int(folder.name.removeprefix("host"))
        started: dict[tuple[int, int, int], float] = {}
        ended: dict[tuple[int, int, int], float] = {}
        for kind, event_id, attempts, pid, at in records(folder):
            (started if kind == "start" else ended)[(event_id, attempts, pid)] = at
        for key, at in started.items():
            out.append((index, (key[0], key[2], at, ended.get(key))))
    return out


def held_by(db_dsn: str, pids: set[int]) -> dict[int, float]:
    """Running events leased to one of ``pids``: id -> lease expiry (unix time)."""
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT id, split_part(locked_by, ':', 2)::int, extract(epoch FROM locked_until) "
            "FROM outbox_event WHERE status = 'running'"
        ).fetchall()
    return {event_id: float(until) for event_id, pid, until in rows if pid in pids}


def test_a_host_cut_off_mid_run_loses_nothing_and_its_leases_are_taken_over(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    reason = unavailable()
    if reason is not None:
        skip_outside_ci(f"the many-hosts test cannot run: {reason}")
    if pg_server.cluster is None:
        skip_outside_ci(
            "the many-hosts test needs the suite's own PostgreSQL cluster (it admits its veth "
            "subnets in pg_hba.conf); unset DISPATCHBOX_TEST_DSN"
        )
    cluster = pg_server.cluster
    dbname = str(conninfo.conninfo_to_dict(db_dsn)["dbname"])
    # 50 ms a handler, 4 at a time in 2 processes a host: some 15 s of work for three hosts.
    ids = publish(db_dsn, "test.chaos", EVENTS, payload={"seconds": 0.05}, max_attempts=10)
    runs: list[WorkerRun] = []
    with hosts(3) as made:
        subnets = [f"{h.server_ip.rsplit('.', 1)[0]}.0/24" for h in made]
        with admitted(pg_server.admin_dsn, cluster.datadir / "pg_hba.conf", subnets):
            try:
                for host in made:
                    folder = record_dir / f"host{host.index}"
                    folder.mkdir()
                    runs.append(start_on(host, cluster.port, dbname, folder, tmp_path))
                for run in runs:
                    wait_until(
                        lambda run=run: (
                            run.proc.poll() is None  # type: ignore[misc]
                            and run.log().count("worker_started") >= 2
                        ),
                        60,
                        "2 worker processes started on every host",
                    )
                cut = made[2]
                cut_at, held = cut_mid_run(db_dsn, record_dir, cut, runs)
                wait_until(lambda: counts(db_dsn) == {"done": EVENTS}, 180, "every event done")
            finally:
                codes = [run.stop() for run in runs]
    assert leftovers(made) == [], "the namespaces or veths were not removed"
    assert codes == [0, 0, 0], [run.log()[-2000:] for run in runs]

    executions = host_executions(record_dir)
    try:
        repeats = assert_guarantees(executions, ids, cut_host=cut.index)
    except AssertionError as exc:
        raise AssertionError(explain(exc, db_dsn, executions, runs, cut_at)) from None
    reaped = reaped_at(db_dsn, list(held))
    assert set(reaped) == set(held), "a lease of the cut host was never taken back"
    redelivered = {}
    for event_id, until in held.items():
        # Taken back once its lease ran out (never while the cut host might still be running
        # it), within a few reaper intervals of that; delivered again by another host after.
        assert until - 0.05 <= reaped[event_id] <= until + 5, (event_id, until, reaped[event_id])
        redelivered[event_id] = min(
            start for host, (e, _, start, _) in executions if e == event_id and host != cut.index
        )
        assert redelivered[event_id] >= reaped[event_id] - 0.05
    per_host = {
        i: len({e for h, (e, _, _, end) in executions if h == i and end}) for i in (1, 2, 3)
    }
    assert all(n > 0 for n in per_host.values()), per_host
    # A cut shorter than TCP's retransmission timeout raises nothing on the cut host: its
    # statements wait, and resume when the link is back (their lease tokens no longer match).
    assert "worker_process_died" not in runs[cut.index - 1].log()
    print(
        f"events={EVENTS} lost=0 per_host={per_host} held_at_cut={len(held)} "
        f"repeats={repeats} lease {LEASE:.0f} s: leases ran out {spread(held, cut_at)} s "
        f"after the cut, taken back {spread(reaped, cut_at)} s, redelivered "
        f"{spread(redelivered, cut_at)} s (reaped events queue behind the backlog)"
    )


def explain(
    exc: AssertionError,
    db_dsn: str,
    executions: list[tuple[int, Execution]],
    runs: list[WorkerRun],
    cut_at: float,
) -> str:
    """The failure with what it needs to be understood: the event's executions (host, pid, start
    and end after the cut), its error history, and every worker log line that is not routine."""
    match = re.search(r"event (\d+)", str(exc))
    lines = [str(exc)]
    if match:
        event_id = int(match.group(1))
        lines += [
            f"  host {h} pid {pid} start {start - cut_at:+.3f} end "
            + (f"{end - cut_at:+.3f}" if end is not None else "none")
            for h, (e, pid, start, end) in executions
            if e == event_id
        ]
        with psycopg.connect(db_dsn) as conn:
            history = conn.execute(
                "SELECT attempt, worker, extract(epoch FROM finished_at) - %s, error_type, "
                "message FROM outbox_event_error WHERE event_id = %s ORDER BY id",
                [cut_at, event_id],
            ).fetchall()
        lines += [f"  error {row}" for row in history]
    for i, run in enumerate(runs, 1):
        noted = [line for line in run.log().splitlines() if "worker_started" not in line]
        lines += [f"  host {i} log: {line[:300]}" for line in noted[-15:]]
    return "\n".join(lines)


def reaped_at(db_dsn: str, ids: list[int]) -> dict[int, float]:
    """When another host's reaper took each event's lease back (its LeaseExpired record)."""
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT event_id, extract(epoch FROM min(finished_at)) FROM outbox_event_error "
            "WHERE error_type = 'LeaseExpired' AND event_id = ANY(%s) GROUP BY event_id",
            [ids],
        ).fetchall()
    return {event_id: float(at) for event_id, at in rows}


def spread(times: dict[int, float], since: float) -> str:
    return f"{min(times.values()) - since:.1f}-{max(times.values()) - since:.1f}"


def start_on(host: Host, port: int, dbname: str, folder: Path, tmp_path: Path) -> WorkerRun:
    dsn = f"host={host.server_ip} port={port} dbname={dbname} user=postgres connect_timeout=3"
    return WorkerRun(
        dsn, folder,
        "--processes", "2", "--concurrency", "4", "--batch-size", "10",
        "--lease-seconds", str(LEASE), "--handler-timeout", "3", "--reaper-interval", "0.5",
        *FAST,
        log=tmp_path / f"worker-host{host.index}.log",
        prefix=host.command([]),
    )  # fmt: skip


def cut_mid_run(
    db_dsn: str, record_dir: Path, cut: Host, runs: list[WorkerRun]
) -> tuple[float, dict[int, float]]:
    """Once a third of the events are done, cut ``cut``'s link while it holds leases; wait until
    the others delivered what it held; then restore the link. Returns the cut time and the held
    events with their lease expiry."""
    wait_until(lambda: counts(db_dsn)["done"] >= EVENTS // 3, 120, "a third delivered")
    folder = record_dir / f"host{cut.index}"

    def pids() -> set[int]:
        return {pid for _, _, _, pid, _ in records(folder)}

    wait_until(lambda: bool(held_by(db_dsn, pids())), 30, "the cut host holding leases")
    cut.cut()
    cut_at = time.time()
    # What it holds now: a completion in flight as the link went down may still have landed.
    time.sleep(0.5)
    held = held_by(db_dsn, pids())
    assert held, "the cut host held nothing once cut: nothing to take over"
    wait_until(
        lambda: done_among(db_dsn, list(held)) == len(held),
        60 + LEASE,
        "the cut host's events delivered by the others",
    )
    assert runs[cut.index - 1].proc.poll() is None, "the cut host's worker gave up"
    cut.restore()
    return cut_at, held


def done_among(db_dsn: str, ids: list[int]) -> int:
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outbox_event WHERE id = ANY(%s) AND status = 'done'", [ids]
        ).fetchone()
    return int(row[0]) if row else 0


def assert_guarantees(
    executions: list[tuple[int, Execution]], ids: list[int], cut_host: int
) -> int:
    """Every event ran to its end at least once; two executions of one event never overlap;
    an execution was repeated only when it had run on the cut host. Returns the repeats."""
    by_event: dict[int, list[tuple[int, Execution]]] = {}
    for host, execution in executions:
        by_event.setdefault(execution[0], []).append((host, execution))
    assert set(by_event) == set(ids), f"{len(set(ids) - set(by_event))} events never ran"
    repeats = 0
    for event_id, runs in by_event.items():
        runs.sort(key=lambda r: r[1][2])
        assert any(end is not None for _, (_, _, _, end) in runs), f"{event_id} never finished"
        for (host, (_, _, _, end)), (_, (_, _, next_start, _)) in itertools.pairwise(runs):
            repeats += 1
            assert host == cut_host, f"event {event_id} ran again after host {host}, not cut"
            assert end is not None and end <= next_start, f"event {event_id}: executions overlap"
    return repeats


def test_the_namespaces_are_removed_when_the_block_fails() -> None:
    reason = unavailable()
    if reason is not None:
        skip_outside_ci(f"the many-hosts test cannot run: {reason}")
    made: list[Host] = []
    with pytest.raises(RuntimeError, match="mid-run"), hosts(2) as created:
        made = created
        assert leftovers(made) == [h.namespace for h in made] + [h.veth for h in made]
        raise RuntimeError("a failure mid-run")
    assert leftovers(made) == []
