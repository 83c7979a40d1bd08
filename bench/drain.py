"""Drain throughput: N no-op events through `dispatchbox worker`, against the raw SQL loop.

    python -m bench.drain [--events 100000] [--processes 1,2] [--batch-sizes 100,1000]
                          [--repeat 3] [--fast "--synchronous-commit off"] [--no-batch-handler]
                          [--no-async-handler]

The worker starts on an empty outbox and waits; the events are then committed in one statement,
and the clock runs from that commit until the last event is done (the database's clock for
both ends, in this scenario and in the raw loop's). Each run checks its own result:
every event done with exactly one attempt (a duplicate delivery would make two). Beside the
rate, each run reports the CPU the whole machine spent per event during the drain (client and
server): on a saturated machine the rate is cores / that, and it is steadier than a wall-clock
rate when the host under the virtual machine is busy.
"""

from __future__ import annotations

import argparse
from itertools import pairwise
from typing import Any

from bench import raw_sql
from bench.common import (
    BenchDatabase,
    checkpoint,
    children,
    count_where,
    cpu_busy_seconds,
    cpu_us_per_event,
    emit_json,
    median_of,
    peak_rss_mb,
    print_table,
    seconds_until_last_done,
    seed,
    wait_drained,
    worker,
)


def run_dispatchbox(
    db: BenchDatabase,
    *,
    events: int,
    processes: int,
    batch: int,
    concurrency: int,
    event_type: str = "bench.noop",
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        args = (
            "--processes",
            str(processes),
            "--batch-size",
            str(batch),
            "--concurrency",
            str(concurrency),
            *extra,
        )
        with worker(dsn, *args) as proc:
            checkpoint(dsn)
            start = seed(dsn, events, event_type)
            busy = cpu_busy_seconds()
            wait_drained(dsn)
            cpu = cpu_us_per_event(busy, cpu_busy_seconds(), events)
            seconds = seconds_until_last_done(dsn, start)
            rss = [peak_rss_mb(pid) for pid in children(proc.pid)]
        once = count_where(dsn, "status = 'done' AND attempts = 1")
        expected_attempts = 1 if event_type != "bench.fail_once" else 2
        exact = count_where(dsn, f"status = 'done' AND attempts = {expected_attempts}")
        return {
            "scenario": f"dispatchbox {event_type}" + (f" {' '.join(extra)}" if extra else ""),
            "processes": processes,
            "batch": batch,
            # the last --concurrency given wins, as on the command line
            "concurrency": [int(v) for k, v in pairwise(args) if k == "--concurrency"][-1],
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "cpu_us_per_event": cpu,
            "peak_rss_mb_per_process": max(rss) if rss else 0.0,
            "exactly_once": exact == events,
            "first_attempt": once,
        }
    finally:
        db.drop(dsn)


def run_raw(db: BenchDatabase, *, events: int, clients: int, batch: int) -> dict[str, Any]:
    dsn = db.fresh()
    try:
        checkpoint(dsn)
        seed(dsn, events)
        start, busy, busy_end = raw_sql.drain(dsn, clients=clients, batch=batch)
        cpu = cpu_us_per_event(busy, busy_end, events)
        seconds = seconds_until_last_done(dsn, start)
        done = count_where(dsn, "status = 'done'")
        return {
            "scenario": "raw SQL loop",
            "processes": clients,
            "batch": batch,
            "concurrency": 0,
            "events": events,
            "seconds": seconds,
            "events_per_s": events / seconds,
            "cpu_us_per_event": cpu,
            "peak_rss_mb_per_process": 0.0,
            "exactly_once": done == events,
            "first_attempt": done,
        }
    finally:
        db.drop(dsn)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--batch-sizes", default="100,1000")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--extra", default="", help="extra worker flags, space separated")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds; each row reports its median run"
    )
    parser.add_argument(
        "--batch-handler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more row per batch size: a batch handler (100 events a call), largest "
        "process count, two threads",
    )
    parser.add_argument(
        "--async-handler",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one more row per batch size: the async no-op handler, largest process count",
    )
    parser.add_argument(
        "--fast",
        default="--synchronous-commit off",
        help="worker flags of one more row per batch size, at the largest process count "
        "(the opt-in fast settings); empty for none",
    )
    args = parser.parse_args(argv)
    processes_list = [int(p) for p in args.processes.split(",")]
    extra = tuple(args.extra.split())
    # (processes, worker flags) of every dispatchbox row
    most = max(processes_list)
    variants = [(p, extra, "bench.noop") for p in processes_list]
    if args.async_handler:
        variants.append((most, extra, "bench.async_noop"))
    if args.fast.strip():
        variants.append((most, extra + tuple(args.fast.split()), "bench.noop"))
    if args.batch_handler:
        # Two threads: a no-op batch is pure Python, and more threads only contend for the GIL
        # with the loop (measured: 0.73 of the raw loop with ten, 0.90 with two).
        variants.append((most, (*extra, "--concurrency", "2"), "bench.noop_batch"))
    db = BenchDatabase()
    rows: list[dict[str, Any]] = []
    try:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            # Rounds rather than one row at a time: each round runs the raw loop and then every
            # dispatchbox row back to back, and a row's ratio is the median of its rounds'
            # ratios, so that a host whose speed drifts during the run (a shared machine's does,
            # by 30% and more) moves both sides of a ratio alike.
            raw_runs: list[dict[str, Any]] = []
            runs: dict[tuple[int, tuple[str, ...], str], list[dict[str, Any]]] = {}
            for _ in range(max(1, args.repeat)):
                raw_run = run_raw(db, events=args.events, clients=2, batch=batch)
                raw_runs.append(raw_run)
                for processes, flags, event_type in variants:
                    run = run_dispatchbox(
                        db,
                        events=args.events,
                        processes=processes,
                        batch=batch,
                        concurrency=args.concurrency,
                        event_type=event_type,
                        extra=flags,
                    )
                    run["ratio_to_raw"] = run["events_per_s"] / raw_run["events_per_s"]
                    runs.setdefault((processes, flags, event_type), []).append(run)
            rows.append(median_of(raw_runs))
            for variant_runs in runs.values():
                row = median_of(variant_runs)
                ratios = sorted(r["ratio_to_raw"] for r in variant_runs)
                row["ratio_to_raw"] = ratios[len(ratios) // 2]
                row["runs_ratio_to_raw"] = [round(r, 2) for r in ratios]
                rows.append(row)
    finally:
        db.close()
    print_table(f"drain ({db.where})", rows)
    result = {"where": db.where, "rows": rows}
    emit_json("drain", result)
    return result


if __name__ == "__main__":
    main()
