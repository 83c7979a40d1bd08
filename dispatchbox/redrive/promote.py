"""The promotion loop of a redrive operation: order-preserving batches at a fixed rate or at
the pace AdaptivePacer sets from the health of what was sent, paused while a breaker is open.
Each batch commits the operation's progress and its audit count in its own transaction."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import audit, dead_letters
from dispatchbox.data import redrive as data
from dispatchbox.redrive.pacer import AdaptivePacer, BreakerGate, Health, PaceConfig

# Events per batch when unpaced (a paced batch is half a second's worth, at most BATCH).
BATCH = 5000
# Seconds between two health samples of a paced redrive.
POLL = 0.5
# A paced redrive judges the events it sent in about this many seconds before now.
WINDOW = 5.0
# A paused paced redrive sends one event this often (seconds) to notice a recovery.
PROBE = 2.0


@dataclass(frozen=True)
class Promotion:
    op_id: int
    audit_id: int | None
    after_id: int  # the next batch starts after this id
    already: int  # events the operation redrove before (the canary, earlier runs)
    settings: dict[str, Any]
    params: dict[str, Any]  # of redrive_ordered_batch, without after_id and batch_size


def health_of(conn: psycopg.Connection[Any], ids: list[int], since: datetime) -> Health:
    row = data.redrive_outcome(conn, {"ids": ids, "since": since}) or {}
    p90 = row.get("p90_seconds")
    return Health(
        done=int(row.get("done") or 0),
        dead=int(row.get("dead") or 0),
        open=int(row.get("open") or 0),
        errors=int(row.get("errors") or 0),
        p90_seconds=None if p90 is None else float(p90),
    )


def promote(
    conn: psycopg.Connection[Any],
    job: Promotion,
    *,
    gate: BreakerGate,
    sleep: Callable[[float], None],
    say: Callable[[str], None],
    deadline: float | None = None,
) -> bool:
    """Redrive the rest; False when ``deadline`` (time.monotonic()) came first (resume later)."""
    settings = job.settings
    rate = settings.get("rate")
    pacer: AdaptivePacer | None = None
    if settings.get("adaptive"):
        top = float(rate or PaceConfig.max_rate)
        pacer = AdaptivePacer(
            PaceConfig(
                start_rate=min(PaceConfig.start_rate, top), max_rate=top, min_rate=min(1.0, top)
            )
        )
    params = job.params
    destinations = list(settings.get("destinations") or [])
    after_id = job.after_id
    window: deque[tuple[float, datetime, list[int]]] = deque()
    # Aggregates with a row another transaction held: their later events stay dead this run.
    held: set[str] = set()
    sent = 0
    last_sample = last_sent = time.monotonic()
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        current = pacer.rate if pacer is not None else rate
        if pacer is not None and time.monotonic() - last_sample >= POLL and window:
            last_sample = time.monotonic()
            while window and window[0][0] < last_sample - WINDOW and len(window) > 1:
                window.popleft()
            ids = [i for _, _, batch in window for i in batch]
            health = health_of(conn, ids, window[0][1])
            blocked = gate.open_destinations(destinations)
            decision = pacer.observe(health, breaker_open=bool(blocked))
            if decision.reason != "healthy" and decision.reason != "too few outcomes yet":
                say(f"pace {decision.rate:,.1f}/s: {decision.reason}")
            current = decision.rate
            if decision.paused:
                if time.monotonic() - last_sent < PROBE:
                    sleep(POLL)
                    continue
                current = 1 / POLL  # a probe of one event, to see the destination recover
        elif gate.open_destinations(destinations):
            say("paused: a destination's breaker is open")
            sleep(POLL)
            continue
        size = BATCH if current is None else max(1, min(BATCH, int(current * POLL) or 1))
        batch_started = time.monotonic()
        with conn.transaction():
            row = data.redrive_ordered_batch(
                conn,
                {**params, "after_id": after_id, "batch_size": size, "held": sorted(held)},
            )
            assert row is not None
            held.update(row["held"])
            ids = list(row["ids"])
            if row["last_id"] is not None:
                after_id = int(row["last_id"])
            data.redrive_op_progress(conn, {"id": job.op_id, "after_id": after_id, "n": len(ids)})
            if job.audit_id is not None and ids:
                audit.progress(conn, job.audit_id, len(ids))
            if ids:
                dead_letters.notify_workers(conn)
            now_db = data.redrive_db_now(conn)
        sent += len(ids)
        last_sent = time.monotonic()
        if ids:
            window.append((time.monotonic(), now_db, ids))
            say(f"promoted {job.already + sent:,}")
        if int(row["picked"]) < size:
            return True
        if current is not None and ids:
            pause = len(ids) / current - (time.monotonic() - batch_started)
            if deadline is not None:
                pause = min(pause, deadline - time.monotonic())
            if pause > 0:
                sleep(pause)
