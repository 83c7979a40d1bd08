"""Many hosts: drain throughput with 1, 2 and 3 hosts' worth of worker processes.

    .venv/bin/python -m bench hosts [--quick] [--events 50000] [--processes 2] [--repeat 3]

Each host is a network namespace joined to this one by a veth pair (tests/netns.py, made here and
removed after); its `dispatchbox worker --processes N` reaches the throwaway PostgreSQL over that
link only, as a worker on another machine would over its network. For 1, 2 and 3 hosts: a fresh
database, the workers started and connected, then --events no-op events committed in one
statement; the rate runs from that commit to the last event done (database clock), the median
of --repeat rounds. One more row runs a single host's processes on this machine's loopback, the
reference without a veth in the way.

THIS MACHINE HAS 2 CORES SHARED BY ALL NAMESPACES (and by PostgreSQL): adding a host adds
processes, not CPU. The figure measures what coordinating more hosts costs (more sessions
claiming the same index with SKIP LOCKED, more connections), not scale-out; on separate machines
each host brings its own cores and the database's CPU becomes the limit (docs/en/scaling.md).

Needs root (network namespaces) and iproute2; without them it says so and measures nothing.
--quick: 20,000 events, one round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import ExitStack
from typing import Any

import psycopg
from psycopg import conninfo

from bench.common import (
    BenchDatabase,
    checkpoint,
    count_where,
    cpu_busy_seconds,
    cpu_us_per_event,
    emit_json,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
    worker,
)
from tests.netns import Host, admitted, hosts, unavailable

LABEL = "2 cores shared by all namespaces: this measures coordination overhead, not scale-out"


def wait_connected(dsn: str, expected: int) -> None:
    """Until ``expected`` worker processes hold their claim connection."""
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name = 'dispatchbox-worker-claim'"
            ).fetchone()
            if row and row[0] >= expected:
                time.sleep(0.3)
                return
            time.sleep(0.05)
    raise TimeoutError(f"{expected} worker processes did not connect within 60 s")


def one_round(
    bench: BenchDatabase, made: list[Host], *, events: int, processes: int, loopback: bool
) -> dict[str, Any]:
    assert bench.cluster is not None
    dsn = bench.fresh()
    dbname = str(conninfo.conninfo_to_dict(dsn)["dbname"])
    flags = ("--processes", str(processes), "--batch-size", "100", "--concurrency", "10")
    try:
        with ExitStack() as stack:
            for host in made:
                # Inside the host's namespace (`ip netns exec NS` before the interpreter), to
                # the database through the host-side end of its veth.
                host_dsn = (
                    dsn
                    if loopback
                    else f"host={host.server_ip} port={bench.cluster.port} dbname={dbname} "
                    "user=postgres"
                )
                prefix = () if loopback else tuple(host.command([]))
                stack.enter_context(worker(host_dsn, *flags, prefix=prefix))
            wait_connected(dsn, processes * len(made))
            checkpoint(dsn)
            start = seed(dsn, events)
            busy = cpu_busy_seconds()
            wait_drained(dsn)
            cpu = cpu_us_per_event(busy, cpu_busy_seconds(), events)
            seconds = seconds_until_last_done(dsn, start)
        exact = count_where(dsn, "status = 'done' AND attempts = 1")
        return {
            "events_per_s": events / seconds,
            "seconds": seconds,
            "cpu_us_per_event": cpu,
            "exactly_once": exact == events,
        }
    finally:
        bench.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, one round")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes per host")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = 20_000, 1
    reason = unavailable()
    if reason is None and "DISPATCHBOX_BENCH_DSN" in os.environ:
        reason = "it needs its own throwaway cluster (it admits its veth subnets in pg_hba.conf)"
    if reason is not None:
        print(f"bench hosts: not measured: {reason}", file=sys.stderr)
        figures: dict[str, Any] = {"skipped": reason}
        emit_json("hosts", figures)
        return figures

    bench = BenchDatabase(listen_addresses="*")
    assert bench.cluster is not None
    rows = []
    try:
        with hosts(3) as made:
            subnets = [f"{h.server_ip.rsplit('.', 1)[0]}.0/24" for h in made]
            with admitted(bench.admin_dsn, bench.cluster.datadir / "pg_hba.conf", subnets):
                plan = [(1, True), (1, False), (2, False), (3, False)]
                for count, loopback in plan:
                    runs = []
                    for _ in range(args.repeat):
                        runs.append(
                            one_round(
                                bench,
                                made[:count],
                                events=args.events,
                                processes=args.processes,
                                loopback=loopback,
                            )
                        )
                    rates = sorted(r["events_per_s"] for r in runs)
                    median = statistics.median(rates)
                    chosen = min(runs, key=lambda r: abs(r["events_per_s"] - median))
                    rows.append(
                        {
                            "hosts": "1 (loopback, no namespace)" if loopback else str(count),
                            "processes": count * args.processes,
                            "events": args.events,
                            "events_per_s": median,
                            "runs_events_per_s": [round(r) for r in rates],
                            "cpu_us_per_event": chosen["cpu_us_per_event"],
                            "exactly_once": all(r["exactly_once"] for r in runs),
                        }
                    )
                    print(f"  {rows[-1]['hosts']}: {median:,.0f} events/s", file=sys.stderr)
    finally:
        bench.close()
    print_table(f"drain by hosts ({LABEL})", rows)
    print(f"\n{LABEL.upper()}")
    figures = {"label": LABEL, "server": bench.where, "rows": rows}
    emit_json("hosts", figures)
    return figures


if __name__ == "__main__":
    main()
