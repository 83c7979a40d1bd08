"""Profile one worker process draining no-op events, in-process under cProfile.

    python -m bench.profile_drain [--events 20000] [--batch-size 1000] [--top 25]

Prints the drain rate and the functions with the most cumulative and own time.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from bench.apps import dispatcher
from bench.common import BenchDatabase, count_where, seed
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.process import WorkerProcess


async def _drain(config: WorkerConfig, events: int) -> float:
    proc = WorkerProcess(config, dispatcher)
    task = asyncio.create_task(proc.run())
    start = time.perf_counter()
    while count_where(config.dsn, "status = 'done'") < events:
        await asyncio.sleep(0.05)
    seconds = time.perf_counter() - start
    proc.request_stop()
    await task
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    db = BenchDatabase()
    try:
        dsn = db.fresh()
        seed(dsn, args.events)
        config = WorkerConfig(
            dsn=dsn,
            app="bench.apps:dispatcher",
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            processes=1,
        )
        profiler = cProfile.Profile()
        profiler.enable()
        seconds = asyncio.run(_drain(config, args.events))
        profiler.disable()
        print(
            f"drained {args.events} events in {seconds:.2f}s "
            f"({args.events / seconds:,.0f} events/s, under cProfile)"
        )
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        db.close()


if __name__ == "__main__":
    main()
