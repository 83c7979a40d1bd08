"""Replay after a recovery: when a breaker with ``replay_dead_on_recovery`` closes, the dead events
of its destination that died during the outage of a transient error are redriven, in batches, at
the destination's ``replay_rate``, under one audit entry whose actor names the breaker
(``breaker:NAME``). Deaths of a PermanentError are never replayed, whatever the classification.

The dead rows are selected by the destination's event types (the worker knows which types a
destination serves); the transient/permanent decision is the configured Python function, so
the candidates (id and last error, nothing else) are read in keyset pages.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import audit, dead_letters, delivery
from dispatchbox.delivery.config import DestinationConfig

logger = logging.getLogger("dispatchbox.delivery")

AsyncConn = psycopg.AsyncConnection[Any]
PAGE = 1000  # candidates read per statement


def replayable(cfg: DestinationConfig, last_error: str | None) -> bool:
    """Whether a death may be replayed: a recorded error, not a PermanentError, transient."""
    if not last_error or last_error.startswith(("PermanentError:", "dispatchbox.PermanentError")):
        return False
    try:
        return bool(cfg.transient(last_error))
    except Exception:  # a user's classifier that raises: do not replay what it cannot judge
        logger.exception("replay_classifier_raised destination=%s", cfg.name)
        return False


async def replay(
    conn: AsyncConn,
    cfg: DestinationConfig,
    event_types: list[str],
    *,
    since: datetime,
    until: datetime,
) -> int:
    """Redrive the outage's transient deaths; returns how many were redriven."""
    actor = f"breaker:{cfg.name}"
    details = {
        "destination": cfg.name,
        "since": since.isoformat(),
        "until": until.isoformat(),
        "event_types": event_types,
    }
    audit_id = await audit.ainsert(
        conn, actor=actor, action="replay", affected=0, outcome="in_progress", details=details
    )
    total, seen, after = 0, 0, 0
    batch = max(1, min(PAGE, int(cfg.replay_rate)))
    outcome = "interrupted"
    try:
        while True:
            rows = await delivery.replay_candidates(
                conn,
                {
                    "destination": cfg.name,
                    "event_types": event_types,
                    "since": since,
                    "until": until,
                    "after_id": after,
                    "limit": batch,
                },
            )
            if not rows:
                break
            after = rows[-1]["id"]
            seen += len(rows)
            ids = [r["id"] for r in rows if replayable(cfg, r["last_error"])]
            if ids:
                async with conn.transaction():
                    done = await dead_letters.aredrive_ids(conn, ids, actor=actor)
                    await audit.aprogress(conn, audit_id, len(done))
                    await dead_letters.anotify_workers(conn)
                total += len(done)
                await asyncio.sleep(len(ids) / cfg.replay_rate)  # the replay's own rate limit
        outcome = "completed"
    finally:
        try:
            await audit.afinish(conn, audit_id, outcome)
        except psycopg.Error:
            logger.warning(
                "replay_audit_not_finished destination=%s audit_id=%s", cfg.name, audit_id
            )
    logger.info(
        "breaker_replay destination=%s replayed=%d examined=%d since=%s until=%s",
        cfg.name,
        total,
        seen,
        since.isoformat(),
        until.isoformat(),
    )
    return total
