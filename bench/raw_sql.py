"""The raw SQL limit: claim a batch with SKIP LOCKED and commit, mark it done and commit,
in N client processes, on the same table and indexes dispatchbox uses. No handler and no Python
per event beyond psycopg adapting the list of ids for the second statement."""

from __future__ import annotations

import multiprocessing
from datetime import datetime
from typing import Any

import psycopg

from bench.common import cpu_busy_seconds, db_clock

CLAIM = """
UPDATE outbox_event e
   SET status = 'running', attempts = e.attempts + 1, locked_by = 'raw',
       locked_until = now() + interval '60 seconds', lease_token = gen_random_uuid(),
       updated_at = now()
 WHERE e.id = ANY (ARRAY(
           SELECT id FROM outbox_event
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY priority, next_attempt_at, id
            LIMIT %s FOR UPDATE SKIP LOCKED))
RETURNING e.id
"""
DONE = """
UPDATE outbox_event
   SET status = 'done', done_at = now(), updated_at = now(), locked_by = NULL,
       locked_until = NULL, lease_token = NULL
 WHERE id = ANY(%s)
"""


def _client(dsn: str, batch: int, ready: Any, go: Any, finished: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ready.release()
        go.wait()
        while True:
            ids = [r[0] for r in conn.execute(CLAIM, [batch]).fetchall()]
            if not ids:
                finished.release()  # before the interpreter's exit, which is not the loop's cost
                return
            conn.execute(DONE, [ids])


def drain(dsn: str, *, clients: int, batch: int) -> tuple[datetime, float | None, float | None]:
    """Drain every pending row. Returns the database clock at the start (the end is
    max(done_at)), and the machine's busy CPU seconds at the start and once every client found
    nothing left (see cpu_busy_seconds)."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Semaphore(0)
    finished = ctx.Semaphore(0)
    go = ctx.Event()
    procs = [
        ctx.Process(target=_client, args=(dsn, batch, ready, go, finished)) for _ in range(clients)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire()  # every client connected: measure the loop, not process start-up
    with psycopg.connect(dsn) as conn:
        start = db_clock(conn)
    busy = cpu_busy_seconds()
    go.set()
    for _ in procs:
        finished.acquire()
    busy_end = cpu_busy_seconds()
    for p in procs:
        p.join()
    return start, busy, busy_end
