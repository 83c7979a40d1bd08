"""procrastinate driver for `python -m bench peers`, run with the peers' own virtualenv.

    python procrastinate_driver.py setup N   apply the schema, batch-defer N no-op jobs (not timed)
    python procrastinate_driver.py work      one worker process until SIGTERM; prints "handled K"

Connection: PEER_PG, JSON {host, port, user, database} (host may be a socket directory).
Settings: procrastinate fetches one job per query, so what it has for speed is the worker's
concurrency (PROCRASTINATE_CONCURRENCY, default 10 async jobs at once per process) and
LISTEN/NOTIFY on (its default). Finished jobs are kept (the default), so the harness can count
them and read when each succeeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from procrastinate import App, PsycopgConnector

PG = json.loads(os.environ["PEER_PG"])
CONCURRENCY = int(os.environ.get("PROCRASTINATE_CONCURRENCY", "10"))
CHUNK = 10_000

app = App(
    connector=PsycopgConnector(
        kwargs={
            "host": PG["host"],
            "port": PG["port"],
            "user": PG["user"],
            "dbname": PG["database"],
        }
    )
)
handled = 0


@app.task(name="noop")
async def noop(n: int) -> None:
    global handled
    handled += 1  # counted in memory: the harness checks exactly-once from the sum


async def setup(n: int) -> None:
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        # batch_defer_async is procrastinate's bulk path: one INSERT for many jobs.
        for start in range(0, n, CHUNK):
            await noop.batch_defer_async(*({"n": i} for i in range(start, min(n, start + CHUNK))))


async def work() -> None:
    async with app.open_async():
        print("ready", flush=True)
        # procrastinate stops on SIGTERM by itself (install_signal_handlers, the default).
        await app.run_worker_async(concurrency=CONCURRENCY, wait=True)
    print(f"handled {handled}", flush=True)


def main(argv: list[str]) -> None:
    try:
        asyncio.run(setup(int(argv[1])) if argv[0] == "setup" else work())
    except Exception as exc:  # one line for the harness, not a traceback
        print(f"procrastinate driver: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
