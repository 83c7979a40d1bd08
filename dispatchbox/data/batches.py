"""The one batched loop: set-based work (archival, purge, redrive by filter) in bounded batches.

Each batch runs in ``conn.transaction()``: on an autocommit or idle connection that commits after
every batch, so no lock or snapshot outlives one batch and an interrupted run keeps what it
committed; inside a transaction the caller already opened, the batches become savepoints and
commit with the caller. Between batches the loop can pause (archival taking turns with the
workers) or pace itself to a rate (a redrive that must not flood a recovering downstream).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import psycopg

# One batch, run inside its transaction: given the total of the batches before it, returns how
# many rows it handled.
Step = Callable[[int], int]
# Called after each batch's transaction committed, with the batch's count and the running total:
# progress reports, and state a caller may only keep once the batch is durable.
Committed = Callable[[int, int], None]
# Whether to stop after a batch, given its count and the running total.
Stop = Callable[[int, int], bool]


def empty_batch(n: int, total: int) -> bool:
    """Stop on an empty batch, not a short one: rows another transaction holds are skipped (SKIP
    LOCKED), so a short batch does not mean the end, and the next batch is cheap."""
    return n == 0


def run_batches(
    conn: psycopg.Connection[Any],
    step: Step,
    *,
    stop: Stop = empty_batch,
    committed: Committed | None = None,
    pause_seconds: float = 0.0,
    rate: float | None = None,
) -> int:
    """Run ``step`` one transaction at a time until ``stop`` says so; return the total handled.

    ``pause_seconds`` sleeps after each batch that is not the last, outside any transaction.
    ``rate`` (rows per second) sleeps as long as it takes for the total not to run ahead of
    ``rate`` since the loop started. An exception from a batch propagates with the batches
    before it committed.
    """
    total = 0
    started = time.monotonic()
    while True:
        with conn.transaction():
            n = step(total)
        total += n
        if committed is not None:
            committed(n, total)
        if stop(n, total):
            return total
        if pause_seconds:
            time.sleep(pause_seconds)
        if rate is not None:
            lag = started + total / rate - time.monotonic()
            if lag > 0:
                time.sleep(lag)
