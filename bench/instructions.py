"""Instructions per event of one worker process's own work, counted by valgrind (callgrind).

    python -m bench.instructions [--events 10000,30000] [--batch-size 1000] [--concurrency 10]
                                 [--handlers sync,async]

A wall-clock rate on a shared virtual machine swings by a third between runs; an instruction
count does not depend on what the host is doing, so this is the figure to compare two versions
of the worker's Python with. One worker drains N no-op events in-process under callgrind, for
two values of N; the difference of the two counts over the difference of N is the cost per event,
start-up and shutdown cancelling out. Measured for a sync and an async no-op handler, each with
its ratio to the sync one. PostgreSQL runs outside valgrind and is not counted.
Needs valgrind (`apt-get install valgrind`); takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from typing import Any

import psycopg

from bench.common import ROOT, BenchDatabase, emit_json, print_table, seed

HANDLERS = {"sync": "bench.noop", "async": "bench.async_noop"}


async def _drain(dsn: str, events: int, batch: int, concurrency: int, event_type: str) -> None:
    from bench.apps import dispatcher
    from dispatchbox.worker.config import WorkerConfig
    from dispatchbox.worker.process import WorkerProcess

    config = WorkerConfig(
        dsn=dsn,
        app="bench.apps:dispatcher",
        batch_size=batch,
        concurrency=concurrency,
        processes=1,
    )
    proc = WorkerProcess(config, dispatcher)
    task = asyncio.create_task(proc.run())
    await asyncio.to_thread(seed, dsn, events, event_type)
    # One connection, a probe a second: the harness's own instructions stay out of the count.
    with psycopg.connect(dsn, autocommit=True) as conn:
        probe = "SELECT count(*) FROM outbox_event WHERE status = 'done'"
        while (await asyncio.to_thread(lambda: conn.execute(probe).fetchone()))[0] < events:  # type: ignore[index]
            await asyncio.sleep(1.0)
    proc.request_stop()
    await task


def _count(dsn: str, events: int, batch: int, concurrency: int, event_type: str) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            dsn,
            str(events),
            str(batch),
            str(concurrency),
            event_type,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    if found is None:
        raise RuntimeError("callgrind printed no instruction count:\n" + out.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["--child"]:
        from dispatchbox.worker.process import tune_gc

        dsn, events, batch, concurrency = args_in[1], *map(int, args_in[2:5])
        tune_gc()
        asyncio.run(_drain(dsn, events, batch, concurrency, args_in[5]))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--events", default="10000,30000", help="two event counts")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--handlers", default="sync,async", help="sync, async or both")
    args = parser.parse_args(args_in)
    kinds = args.handlers.split(",")
    if not kinds or any(k not in HANDLERS for k in kinds):
        parser.error(f"--handlers takes sync, async or sync,async, got {args.handlers!r}")
    small, large = sorted(int(n) for n in args.events.split(","))
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    db = BenchDatabase()
    rows: list[dict[str, Any]] = []
    try:
        for kind in kinds:
            counts: dict[int, int] = {}
            for n in (small, large):
                dsn = db.fresh()
                print(f"counting a drain of {n:,} {kind} events under callgrind ...", flush=True)
                counts[n] = _count(dsn, n, args.batch_size, args.concurrency, HANDLERS[kind])
                db.drop(dsn)
            rows.append(
                {
                    "scenario": f"worker process, {kind} no-op handler",
                    "batch": args.batch_size,
                    "concurrency": args.concurrency,
                    "instructions_per_event": round(
                        (counts[large] - counts[small]) / (large - small)
                    ),
                    f"instructions_{small}": counts[small],
                    f"instructions_{large}": counts[large],
                }
            )
    finally:
        db.close()
    base = rows[0]["instructions_per_event"]
    for row in rows:
        row["ratio_to_first"] = round(row["instructions_per_event"] / base, 3)
    print_table("instructions (callgrind)", rows)
    result = {"rows": rows}
    emit_json("instructions", result)
    return result


if __name__ == "__main__":
    main()
