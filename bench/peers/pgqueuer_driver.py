"""pgqueuer driver for `python -m bench peers`, run with the peers' own virtualenv.

    python pgqueuer_driver.py setup N   install the schema, bulk-enqueue N no-op jobs (not timed)
    python pgqueuer_driver.py work      one worker process until SIGTERM; prints "handled K"

Connection: PEER_PG, JSON {host, port, user, database} (host may be a socket directory).
Settings, as pgqueuer's own benchmark (tools/benchmark.py) runs it: the asyncpg driver on
uvloop, an async entrypoint; a dequeue batch of PGQ_BATCH (default 100, as in issue 7's
measurement) and the log aggregation off, so that every completion stays in pgqueuer_log,
where the harness reads when it happened and how many there were.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import timedelta

import asyncpg
import uvloop
from pgqueuer import AsyncpgDriver, Job, QueueManager
from pgqueuer.queries import Queries

PG = json.loads(os.environ["PEER_PG"])
BATCH = int(os.environ.get("PGQ_BATCH", "100"))
CHUNK = 10_000


async def connect() -> asyncpg.Connection:
    return await asyncpg.connect(
        host=PG["host"], port=PG["port"], user=PG["user"], database=PG["database"]
    )


async def setup(n: int) -> None:
    conn = await connect()
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    # enqueue() with lists is pgqueuer's bulk path: one INSERT ... unnest per call.
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
    await conn.close()


async def work() -> None:
    handled = 0
    conn = await connect()
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        nonlocal handled
        handled += 1  # counted in memory: the harness checks exactly-once from the sum

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    print("ready", flush=True)
    await qm.run(batch_size=BATCH, log_aggregation_interval=timedelta(0))
    print(f"handled {handled}", flush=True)


def main(argv: list[str]) -> None:
    try:
        uvloop.run(setup(int(argv[1])) if argv[0] == "setup" else work())
    except Exception as exc:  # one line for the harness, not a traceback
        print(f"pgqueuer driver: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
