"""The alert evaluator: tells Slack when events die, pile up, or stop being dispatched.

Three alerts, each a row of ``outbox_alert_state`` (migration 0004):

* ``dead_events``: events went dead. At most one message per ``dead_window``, listing how many
  died since the last message, by event type, the top errors (masked, with their fingerprint)
  and the first ids to retry. An event notification: it has no "resolved".
* ``dead_count``: more than ``dead_threshold`` events are dead. One message when the incident
  opens, one when it clears ("resolved").
* ``pending_age``: the oldest due pending event has waited more than ``pending_age`` seconds:
  the dispatcher is stuck or far behind. Firing and resolved, as above.

Every worker process (and ``dispatchbox serve``) runs an evaluator; nothing is kept in one
process's memory. A round for one alert is one transaction: the evaluator locks the alert's row
with ``FOR UPDATE SKIP LOCKED``, and only when nobody evaluated it within ``interval``, so one
process decides per interval and the others skip without waiting. The holder measures, sends
(bounded by the Slack timeout) and records what it announced before releasing the lock, so the
next evaluator, on any host, sees it: one incident, one message. A message Slack did not accept
is not recorded as sent and is tried again next round; the failure is counted in the row.

The evaluator runs on its own thread and connection: a slow or failing Slack, or a slow
database, never delays a handler or a claim.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg

from dispatchbox import db, queries
from dispatchbox.errors import ConfigurationError, DatabaseUnreachable

logger = logging.getLogger("dispatchbox.alerts")

ALERTS = ("dead_events", "dead_count", "pending_age")
# Seconds of deaths before the first evaluation against a database that are reported.
FIRST_LOOKBACK = 300.0


class Sender(Protocol):
    def send(self, text: str) -> bool: ...


@dataclass(frozen=True)
class AlertConfig:
    """When to alert. Every duration is in seconds; -1 disables an alert."""

    # Alerts are evaluated at most this often, by one process across all processes and hosts
    # (DISPATCHBOX_ALERT_INTERVAL_SECONDS).
    interval: float = 10.0
    # "Events went dead": at most one message per window; deaths in between are summed into the
    # next one. -1 disables (DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS).
    dead_window: float = 60.0
    # "Too many dead events": an incident while more than this many events are dead. -1
    # disables (DISPATCHBOX_ALERT_DEAD_THRESHOLD).
    dead_threshold: int = 1000
    # "Dispatcher stuck": an incident while the oldest due pending event has waited longer than
    # this. -1 disables (DISPATCHBOX_ALERT_PENDING_AGE_SECONDS).
    pending_age: float = 600.0
    # After a threshold incident resolves, a new one is not announced for this long, so a value
    # hovering around its threshold does not page every minute
    # (DISPATCHBOX_ALERT_COOLDOWN_SECONDS).
    cooldown: float = 300.0
    # Error groups listed in a deaths message (DISPATCHBOX_ALERT_TOP_ERRORS).
    top_errors: int = 5
    # Event ids listed per error group, ready to paste into retry-batch
    # (DISPATCHBOX_ALERT_IDS_PER_ERROR).
    ids_per_error: int = 10
    # First word of every message: name the environment, e.g. "prod-eu"
    # (DISPATCHBOX_ALERT_LABEL).
    label: str = "dispatchbox"
    # Deaths younger than this are left for the next message, so that one committed a moment
    # after the query started is not skipped by the cursor.
    settle: float = 1.0

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_INTERVAL_SECONDS must be positive")
        for name, value in (
            ("DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS", self.dead_window),
            ("DISPATCHBOX_ALERT_DEAD_THRESHOLD", self.dead_threshold),
            ("DISPATCHBOX_ALERT_PENDING_AGE_SECONDS", self.pending_age),
        ):
            if value != -1 and value < 0:
                raise ConfigurationError(f"{name} must be -1 (off) or at least 0, got {value}")
        if self.cooldown < 0 or self.settle < 0:
            raise ConfigurationError("DISPATCHBOX_ALERT_COOLDOWN_SECONDS must not be negative")
        if self.top_errors < 1 or self.ids_per_error < 1:
            raise ConfigurationError("top errors and ids per error must be at least 1")

    def enabled(self) -> list[str]:
        """The alerts that are on, in evaluation order."""
        on = {
            "dead_events": self.dead_window != -1,
            "dead_count": self.dead_threshold != -1,
            "pending_age": self.pending_age != -1,
        }
        return [a for a in ALERTS if on[a]]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AlertConfig:
        source = os.environ if env is None else env

        def number(name: str, default: float, kind: Callable[[str], float] = float) -> Any:
            raw = source.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return kind(raw.strip())
            except ValueError:
                raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None

        base = cls()
        return cls(
            interval=number("DISPATCHBOX_ALERT_INTERVAL_SECONDS", base.interval),
            dead_window=number("DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS", base.dead_window),
            dead_threshold=number("DISPATCHBOX_ALERT_DEAD_THRESHOLD", base.dead_threshold, int),
            pending_age=number("DISPATCHBOX_ALERT_PENDING_AGE_SECONDS", base.pending_age),
            cooldown=number("DISPATCHBOX_ALERT_COOLDOWN_SECONDS", base.cooldown),
            top_errors=number("DISPATCHBOX_ALERT_TOP_ERRORS", base.top_errors, int),
            ids_per_error=number("DISPATCHBOX_ALERT_IDS_PER_ERROR", base.ids_per_error, int),
            label=(source.get("DISPATCHBOX_ALERT_LABEL") or base.label).strip() or base.label,
        )


def alerts_enabled(env: Mapping[str, str] | None = None) -> bool:
    """DISPATCHBOX_ALERT_ENABLED=0 keeps this process from evaluating (others still do)."""
    source = os.environ if env is None else env
    value = (source.get("DISPATCHBOX_ALERT_ENABLED") or "1").strip().lower()
    return value not in ("0", "false", "no", "off")


# -- message text --------------------------------------------------------------------------------


def _escape(text: str) -> str:
    # Slack mrkdwn: &, < and > are control characters; masked errors contain "<n>".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return f"`{_escape(flat)}`"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{hours // 24}d {hours % 24}h"


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def deaths_message(
    config: AlertConfig,
    where: str,
    since: datetime | None,
    by_type: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> str:
    total = sum(int(r["count"]) for r in by_type)
    noun = "event" if total == 1 else "events"
    when = f" since {_utc(since)}" if since is not None else ""
    lines = [
        f":rotating_light: *{_escape(config.label)}*: {total:,} {noun} went dead{when} ({where})"
    ]
    shown = by_type[:10]
    parts = [f"{_code(r['event_type'], 80)} {int(r['count']):,}" for r in shown]
    if len(by_type) > len(shown):
        parts.append(f"and {len(by_type) - len(shown)} more types")
    lines.append("*By event type:* " + " · ".join(parts))
    if errors:
        lines.append("*Top errors:*")
        for group in errors:
            ids = [int(i) for i in group["ids"] or []]
            more = "…" if int(group["count"]) > len(ids) else ""
            lines.append(
                f"• {int(group['count']):,}x {_code(group['signature'] or '(no error recorded)')} "
                f"(fingerprint `{group['fingerprint']}`), ids {', '.join(map(str, ids))}{more}"
            )
        first = errors[0]
        first_ids = " ".join(str(int(i)) for i in (first["ids"] or []))
        lines.append(
            f"Retry: `dispatchbox dead-events retry-batch {first_ids}`, or the whole group: "
            "`dispatchbox dead-events retry-batch --all-matching --error-fingerprint "
            f"{first['fingerprint']}`"
        )
    return "\n".join(lines)


# -- the evaluator -------------------------------------------------------------------------------


@dataclass
class _State:
    """An alert's row, as locked for one round."""

    alert: str
    active: bool
    opened_at: datetime | None
    resolved_at: datetime | None
    last_sent_at: datetime | None
    last_value: float | None
    cursor_at: datetime | None
    now: datetime

    def params(self, evaluated_by: str, *, sent: int = 0, failed: int = 0) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "active": self.active,
            "opened_at": self.opened_at,
            "resolved_at": self.resolved_at,
            "last_sent_at": self.last_sent_at,
            "last_value": self.last_value,
            "cursor_at": self.cursor_at,
            "evaluated_by": evaluated_by,
            "sent": sent,
            "failed": failed,
        }


def evaluator_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class AlertEvaluator:
    """Evaluates the enabled alerts; ``run_once`` is one round, ``start`` runs rounds on a thread.

    ``sender`` is anything with ``send(text) -> bool`` (dispatchbox.observability.slack).
    """

    def __init__(
        self,
        dsn: str,
        sender: Sender,
        config: AlertConfig | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.sender = sender
        self.config = config or AlertConfig()
        self.name = name or evaluator_name()
        self.where = db.describe(dsn)
        self._conn: psycopg.Connection[Any] | None = None
        self._ensured = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # -- connection ------------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._disconnect()
            self._conn = db.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=5,
                application_name="dispatchbox-alerts",
                prepare_threshold=None,
            )
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- one round ---------------------------------------------------------------------------------

    def run_once(self) -> list[str]:
        """Evaluate every enabled alert that is due and free; return those that sent a message."""
        sent: list[str] = []
        conn = self._connection()
        if not self._ensured:
            for alert in self.config.enabled():
                queries.execute(
                    conn, "alert_ensure", {"alert": alert, "lookback": self._lookback()}
                )
            self._ensured = True
        for alert in self.config.enabled():
            if self._stop.is_set():
                break
            if self._evaluate(conn, alert):
                sent.append(alert)
        return sent

    def _lookback(self) -> float:
        # The first time alerting runs against a database, recent deaths are still news; a
        # backlog of old ones is not (it is in `dead-events stats`).
        return max(FIRST_LOOKBACK, self.config.dead_window, self.config.interval)

    def _evaluate(self, conn: psycopg.Connection[Any], alert: str) -> bool:
        with conn.transaction():
            row = queries.fetch_one(
                conn, "alert_claim", {"alert": alert, "interval": self.config.interval}
            )
            if row is None:
                return False  # another process holds it, or evaluated it within the interval
            state = _State(**row)
            if alert == "dead_events":
                return self._dead_events(conn, state)
            return self._threshold(conn, state)

    def _send(self, text: str) -> bool:
        try:
            return bool(self.sender.send(text))
        except Exception:  # a sender must not raise; if one does, it is one failed send
            logger.exception("alert_sender_raised")
            return False

    def _save(
        self, conn: psycopg.Connection[Any], state: _State, *, sent: int = 0, failed: int = 0
    ) -> None:
        queries.execute(conn, "alert_save", state.params(self.name, sent=sent, failed=failed))

    def _dead_events(self, conn: psycopg.Connection[Any], state: _State) -> bool:
        cfg = self.config
        if state.last_sent_at is not None and (
            state.now - state.last_sent_at < timedelta(seconds=cfg.dead_window)
        ):
            self._save(conn, state)  # deaths wait for the next window
            return False
        upto = state.now - timedelta(seconds=cfg.settle)
        after = state.cursor_at or (upto - timedelta(seconds=self._lookback()))
        if upto <= after:
            self._save(conn, state)
            return False
        window = {"after": after, "upto": upto}
        by_type = queries.fetch_all(conn, "alert_new_dead_by_type", window)
        if not by_type:
            state.cursor_at = upto
            self._save(conn, state)
            return False
        errors = queries.fetch_all(
            conn,
            "alert_new_dead_errors",
            {**window, "top": cfg.top_errors, "max_ids": cfg.ids_per_error},
        )
        text = deaths_message(cfg, self.where, state.last_sent_at and after, by_type, errors)
        if not self._send(text):
            self._save(conn, state, failed=1)  # the same deaths, and newer ones, next round
            return False
        state.cursor_at = upto
        state.last_sent_at = state.now
        self._save(conn, state, sent=1)
        logger.info(
            "alert_sent alert=dead_events events=%d types=%d",
            sum(int(r["count"]) for r in by_type),
            len(by_type),
        )
        return True

    def _measure(self, conn: psycopg.Connection[Any], alert: str) -> tuple[float, float]:
        if alert == "dead_count":
            value = float(queries.fetch_value(conn, "alert_dead_count") or 0)
            return value, float(self.config.dead_threshold)
        value = float(queries.fetch_value(conn, "alert_oldest_pending_age") or 0)
        return value, float(self.config.pending_age)

    def _threshold(self, conn: psycopg.Connection[Any], state: _State) -> bool:
        cfg = self.config
        value, threshold = self._measure(conn, state.alert)
        firing = value > threshold
        if firing == state.active:
            self._save(conn, state)  # nothing new: the incident was announced, or there is none
            return False
        if (
            firing
            and state.resolved_at is not None
            and (state.now - state.resolved_at < timedelta(seconds=cfg.cooldown))
        ):
            self._save(conn, state)  # flapping: the last incident closed moments ago
            return False
        if firing:
            text = self._firing_text(conn, state.alert, value, threshold)
        else:
            text = self._resolved_text(state, value, threshold)
        if not self._send(text):
            self._save(conn, state, failed=1)
            return False
        if firing:
            state.active, state.opened_at, state.last_value = True, state.now, value
        else:
            state.active, state.resolved_at = False, state.now
        state.last_sent_at = state.now
        self._save(conn, state, sent=1)
        logger.info(
            "alert_sent alert=%s state=%s value=%g threshold=%g",
            state.alert,
            "firing" if firing else "resolved",
            value,
            threshold,
        )
        return True

    def _firing_text(
        self, conn: psycopg.Connection[Any], alert: str, value: float, threshold: float
    ) -> str:
        label = _escape(self.config.label)
        if alert == "dead_count":
            return (
                f":warning: *{label}*: {int(value):,} events are dead, more than the threshold "
                f"of {int(threshold):,} ({self.where}). See `dispatchbox dead-events stats "
                "--by error`."
            )
        health = queries.fetch_one(conn, "health") or {}
        return (
            f":hourglass: *{label}*: the oldest due pending event has waited "
            f"{_duration(value)}, more than {_duration(threshold)}: the dispatcher is stuck or "
            f"far behind ({self.where}). {int(health.get('pending') or 0):,} events pending, "
            f"{int(health.get('running') or 0):,} running. Are workers running?"
        )

    def _resolved_text(self, state: _State, value: float, threshold: float) -> str:
        label = _escape(self.config.label)
        lasted = ""
        if state.opened_at is not None:
            lasted = f" after {_duration((state.now - state.opened_at).total_seconds())}"
        if state.alert == "dead_count":
            what = f"{int(value):,} events dead, at most {int(threshold):,}"
        else:
            what = f"the oldest due pending event has waited {_duration(value)}"
        return f":white_check_mark: *{label}*: resolved{lasted}: {what} ({self.where})."

    # -- background thread ---------------------------------------------------------------------

    def poke(self) -> None:
        """Something happened (an event died): evaluate soon rather than at the next tick."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="dispatchbox-alerts", daemon=True)
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._disconnect()

    def _loop(self) -> None:
        logger.info(
            "alerts_started evaluator=%s alerts=%s interval=%gs",
            self.name,
            ",".join(self.config.enabled()) or "-",
            self.config.interval,
        )
        while not self._stop.is_set():
            self._round()
            self._wake.wait(self.config.interval)
            self._wake.clear()
            # Several deaths in a burst wake us many times: one round per half interval at most.
            self._stop.wait(min(1.0, self.config.interval / 2))

    def _round(self) -> None:
        try:
            self.run_once()
        except (DatabaseUnreachable, psycopg.Error) as exc:
            self._disconnect()
            if not self._failing:
                logger.warning(
                    "alerts_database_unavailable error=%s",
                    db.redact(" ".join(str(exc).split()), self.dsn)[:300],
                )
            self._failing = True
            return
        except Exception:
            logger.exception("alerts_round_failed")
            return
        if self._failing:
            logger.info("alerts_database_available_again")
        self._failing = False


def evaluator_from_env(dsn: str, *, name: str | None = None) -> AlertEvaluator | None:
    """An evaluator sending to the Slack configured in the environment; None when Slack is not
    configured or DISPATCHBOX_ALERT_ENABLED=0. Raises ConfigurationError for bad settings."""
    from dispatchbox.observability.slack import SlackConfig, SlackSender

    slack = SlackConfig.from_env()
    config = AlertConfig.from_env()
    if slack is None or not alerts_enabled():
        return None
    return AlertEvaluator(dsn, SlackSender(slack), config, name=name)


def check_env() -> str | None:
    """Validate the alerting settings in the environment; a line saying where alerts go."""
    from dispatchbox.observability.slack import SlackConfig

    slack = SlackConfig.from_env()
    config = AlertConfig.from_env()
    if slack is None:
        return None
    if not alerts_enabled():
        return "alerts off in this process (DISPATCHBOX_ALERT_ENABLED=0)"
    return f"alerts to Slack {slack.destination}: {', '.join(config.enabled()) or 'none'}"
