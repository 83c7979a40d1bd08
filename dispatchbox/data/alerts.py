"""Alert statements (sql/queries/alerts.sql, alerts_redrive.sql, cleanup.sql, health.sql): the
alert rows the evaluators claim and save, and what they measure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import queries

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

# Threshold alerts and the one-value query each measures.
_MEASURES = {
    "dead_count": "alert_dead_count",
    "dead_age": "alert_oldest_dead_age",
    "pending_age": "alert_oldest_pending_age",
    "breaker_open": "alert_breaker_open_age",
    "cleanup_held": "alert_cleanup_held",
}


def ensure(conn: Conn, *, alert: str, channel: str, lookback: float) -> None:
    """Create the alert's row for this channel if missing (deaths ``lookback`` seconds back
    are still news the first time)."""
    params = {"alert": alert, "channel": channel, "lookback": lookback}
    queries.execute(conn, "alert_ensure", params)


def claim(conn: Conn, *, alert: str, channel: str, interval: float) -> Row | None:
    """Lock the alert's row for one round when it is due and free; None otherwise."""
    params = {"alert": alert, "channel": channel, "interval": interval}
    return queries.fetch_one(conn, "alert_claim", params)


def save(conn: Conn, params: dict[str, Any]) -> None:
    """Write back the alert's row after a round."""
    queries.execute(conn, "alert_save", params)


def measure(conn: Conn, alert: str) -> float:
    """The current value of a threshold alert's measure (0 when there is nothing to measure)."""
    return float(queries.fetch_value(conn, _MEASURES[alert]) or 0)


def new_dead_by_type(conn: Conn, *, after: datetime, upto: datetime) -> list[Row]:
    """Deaths in (after, upto] per event type."""
    return queries.fetch_all(conn, "alert_new_dead_by_type", {"after": after, "upto": upto})


def new_dead_errors(
    conn: Conn, *, after: datetime, upto: datetime, top: int, max_ids: int
) -> list[Row]:
    """The ``top`` errors of the deaths in (after, upto], each with up to ``max_ids`` ids."""
    params = {"after": after, "upto": upto, "top": top, "max_ids": max_ids}
    return queries.fetch_all(conn, "alert_new_dead_errors", params)


def new_fingerprints(
    conn: Conn, *, after: datetime, upto: datetime, window: float, top: int
) -> list[Row]:
    """Error fingerprints first seen in (after, upto] and unseen for ``window`` seconds."""
    params = {"after": after, "upto": upto, "window": window, "top": top}
    return queries.fetch_all(conn, "alert_new_fingerprints", params)


def dead_burn_rate(conn: Conn, *, window: float, slo: float, objective: float) -> float:
    """How fast the events finished in the last ``window`` seconds spend the error budget of
    "``slo`` delivered within ``objective`` seconds" (dead or late events burn it)."""
    params = {"window": window, "slo": slo, "objective": objective}
    return float(queries.fetch_value(conn, "alert_dead_burn_rate", params) or 0)
