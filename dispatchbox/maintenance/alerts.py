"""The alert evaluator: tells the channels when events die, pile up, linger, or stop moving.

Four alerts (dispatchbox.maintenance.alert_config), each a row of ``outbox_alert_state`` per
channel (migrations 0004 and 0006):

* ``dead_events``: events went dead. At most one message per ``dead_window``, listing how many
  died since the last message, by event type, the top errors (masked, with their fingerprint)
  and the first ids to retry. A notification: it has no "resolved", and pagers do not get it.
* ``dead_count``: more than ``dead_threshold`` events are dead.
* ``dead_age``: the oldest dead event died more than ``dead_age`` seconds ago: nobody looked.
* ``pending_age``: the oldest due pending event has waited more than ``pending_age`` seconds:
  the dispatcher is stuck or far behind.
* ``breaker_open``: a destination's circuit breaker has been open longer than ``breaker_open``
  seconds: its events wait (dispatchbox.delivery).
* ``cleanup_held``: a snapshot or prepared transaction has held back vacuum of the outbox for
  more than ``cleanup_held`` seconds (the view outbox_cleanup_horizon, migration 0010).
* ``new_fingerprint`` (a notification) and ``dead_budget`` (an incident): a new error group,
  and dead-letter inflow burning the delivery SLO's budget (maintenance/fingerprint_alert.py).

``dead_count``, ``dead_age``, ``pending_age`` and ``dead_budget`` are incidents: one message
when one opens (trigger), one when it clears (resolve), both carrying the same incident key.

Every worker process (and ``dispatchbox serve``) runs one evaluator per channel; nothing is kept
in one process's memory. A round for one alert and channel is one transaction: the evaluator
locks the row with ``FOR UPDATE SKIP LOCKED``, and only when nobody evaluated it within
``interval``, so one process decides per interval and the others skip without waiting. The
holder measures, sends (bounded by the channel's timeout) and records what it announced before
releasing the lock, so the next evaluator, on any host, sees it: one incident, one message per
channel. A message the channel did not accept is not recorded as sent and is tried again next
round; the failure is counted in the row.

Each channel's evaluator runs on its own thread and connection: a slow or failing channel, or a
slow database, never delays a handler, a claim, or another channel.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from dispatchbox import db
from dispatchbox.data import alerts as data
from dispatchbox.data.connection import ReconnectingConnection
from dispatchbox.errors import DatabaseUnreachable
from dispatchbox.maintenance import fingerprint_alert
from dispatchbox.maintenance.alert_config import INCIDENTS, AlertConfig, alerts_enabled
from dispatchbox.maintenance.alert_text import (
    Channel,
    Notice,
    deaths_message,
    firing_message,
    incident_key,
    resolved_message,
    summary_line,
)
from dispatchbox.outbox_status import outbox_status

__all__ = ["AlertConfig", "AlertEvaluator", "AlertGroup", "Channel", "Notice", "alerts_enabled"]

logger = logging.getLogger("dispatchbox.alerts")

# Seconds of deaths before the first evaluation against a database that are reported.
FIRST_LOOKBACK = 300.0
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

    def params(
        self, channel: str, evaluated_by: str, *, sent: int = 0, failed: int = 0
    ) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "channel": channel,
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
    """Evaluates the enabled alerts for one channel; ``run_once`` is one round, ``start`` runs
    rounds on a thread. ``sender`` is a Channel (dispatchbox.observability builds them).
    """

    def __init__(
        self,
        dsn: str,
        sender: Channel,
        config: AlertConfig | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.sender = sender
        self.config = config or AlertConfig()
        self.channel = sender.name
        self.alerts = [
            a for a in self.config.enabled() if a in INCIDENTS or not sender.incidents_only
        ]
        self.name = name or evaluator_name()
        self.where = db.describe(dsn)
        self._db = ReconnectingConnection(
            dsn, application_name="dispatchbox-alerts", connect_timeout=5
        )
        self._ensured = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    # -- one round ---------------------------------------------------------------------------------

    def run_once(self) -> list[str]:
        """Evaluate every enabled alert that is due and free; return those that sent a message."""
        sent: list[str] = []
        conn = self._db.get()
        if not self._ensured:
            for alert in self.alerts:
                data.ensure(conn, alert=alert, channel=self.channel, lookback=self._lookback())
            self._ensured = True
        for alert in self.alerts:
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
            row = data.claim(conn, alert=alert, channel=self.channel, interval=self.config.interval)
            if row is None:
                return False  # another process holds it, or evaluated it within the interval
            state = _State(**row)
            if alert == "dead_events":
                return self._dead_events(conn, state)
            if alert == "new_fingerprint":
                return fingerprint_alert.evaluate(self, conn, state)
            return self._threshold(conn, state)

    def _send(self, notice: Notice) -> bool:
        try:
            return bool(self.sender.send(notice))
        except Exception:  # a sender must not raise; if one does, it is one failed send
            logger.exception("alert_sender_raised")
            return False

    def _save(
        self, conn: psycopg.Connection[Any], state: _State, *, sent: int = 0, failed: int = 0
    ) -> None:
        data.save(conn, state.params(self.channel, self.name, sent=sent, failed=failed))

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
        by_type = data.new_dead_by_type(conn, after=after, upto=upto)
        if not by_type:
            state.cursor_at = upto
            self._save(conn, state)
            return False
        errors = data.new_dead_errors(
            conn, after=after, upto=upto, top=cfg.top_errors, max_ids=cfg.ids_per_error
        )
        text = deaths_message(cfg, self.where, state.last_sent_at and after, by_type, errors)
        notice = Notice(
            alert="dead_events",
            action="notify",
            text=text,
            summary=summary_line(text),
            incident_key=incident_key(cfg.label, "dead_events", upto),
            label=cfg.label,
            where=self.where,
            at=state.now,
            value=float(sum(int(r["count"]) for r in by_type)),
        )
        if not self._send(notice):
            self._save(conn, state, failed=1)  # the same deaths, and newer ones, next round
            return False
        state.cursor_at = upto
        state.last_sent_at = state.now
        self._save(conn, state, sent=1)
        logger.info(
            "alert_sent alert=dead_events channel=%s events=%d types=%d",
            self.channel,
            sum(int(r["count"]) for r in by_type),
            len(by_type),
        )
        return True

    def _measure(self, conn: psycopg.Connection[Any], alert: str) -> float:
        if alert == "dead_budget":
            return fingerprint_alert.burn_rate(conn, self.config)
        return data.measure(conn, alert)

    def _threshold(self, conn: psycopg.Connection[Any], state: _State) -> bool:
        cfg = self.config
        value = self._measure(conn, state.alert)
        threshold = cfg.threshold(state.alert)
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
            # outbox_status, not the exact outbox_health view: counting ten million pending
            # events took 1.6 s (python -m bench big_tables); above 10,000 it estimates.
            text = firing_message(cfg, self.where, state.alert, value, outbox_status(conn))
            # The incident's key is fixed at the first attempt and saved even if that send
            # fails: a timed-out POST may still have reached PagerDuty, so retries (and the
            # resolve) must name the same incident rather than open an orphan.
            retrying = state.opened_at is not None and (
                state.resolved_at is None or state.opened_at > state.resolved_at
            )
            if not retrying:
                state.opened_at = state.now
            opened = state.opened_at or state.now
        else:
            opened = state.opened_at or state.now
            lasted = (state.now - state.opened_at).total_seconds() if state.opened_at else None
            text = resolved_message(cfg, self.where, state.alert, value, lasted)
        notice = Notice(
            alert=state.alert,
            action="trigger" if firing else "resolve",
            text=text,
            summary=summary_line(text),
            incident_key=incident_key(cfg.label, state.alert, opened),
            label=cfg.label,
            where=self.where,
            at=state.now,
            value=value,
            threshold=threshold,
        )
        if not self._send(notice):
            self._save(conn, state, failed=1)
            return False
        if firing:
            state.active, state.last_value = True, value
        else:
            state.active, state.resolved_at = False, state.now
        state.last_sent_at = state.now
        self._save(conn, state, sent=1)
        logger.info(
            "alert_sent alert=%s channel=%s state=%s value=%g threshold=%g",
            state.alert,
            self.channel,
            "firing" if firing else "resolved",
            value,
            threshold,
        )
        return True

    # -- background thread ---------------------------------------------------------------------

    def poke(self) -> None:
        """Something happened (an event died): evaluate soon rather than at the next tick."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._loop, name=f"dispatchbox-alerts-{self.channel}", daemon=True
        )
        self._thread.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._db.close()

    def _loop(self) -> None:
        logger.info(
            "alerts_started evaluator=%s channel=%s alerts=%s interval=%gs",
            self.name,
            self.channel,
            ",".join(self.alerts) or "-",
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
            self._db.close()
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


class AlertGroup:
    """One evaluator per channel, started, poked and stopped together."""

    def __init__(self, evaluators: Sequence[AlertEvaluator]) -> None:
        self.evaluators = list(evaluators)

    @classmethod
    def for_channels(
        cls,
        dsn: str,
        channels: Sequence[Channel],
        config: AlertConfig | None = None,
        *,
        name: str | None = None,
    ) -> AlertGroup:
        return cls([AlertEvaluator(dsn, c, config, name=name) for c in channels])

    def run_once(self) -> dict[str, list[str]]:
        """One round of every channel, one after the other (tests); by channel, what was sent."""
        return {ev.channel: ev.run_once() for ev in self.evaluators}

    def poke(self) -> None:
        for ev in self.evaluators:
            ev.poke()

    def start(self) -> None:
        for ev in self.evaluators:
            ev.start()

    def stop(self, timeout: float = 5.0) -> None:
        for ev in self.evaluators:
            ev.stop(timeout)
