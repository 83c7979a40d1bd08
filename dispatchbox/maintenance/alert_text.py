"""What an alert says: the Notice every channel receives, the Channel interface, message text.

A Notice carries the text twice: ``text`` in Slack's mrkdwn, ``plain`` for e-mail, PagerDuty and
webhooks, plus what a pager needs to pair a trigger with its resolve: ``incident_key``, the same
for both messages of one incident (PagerDuty's dedup_key). Channels live in
dispatchbox.observability and are passed in; this module imports none of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from dispatchbox.maintenance.alert_config import AlertConfig
from dispatchbox.outbox_status import OutboxStatus

Action = Literal["trigger", "resolve", "notify"]


@dataclass(frozen=True)
class Notice:
    """One alert message, as every channel receives it."""

    # dead_events | dead_count | dead_age | pending_age | breaker_open | cleanup_held |
    # new_fingerprint | dead_budget
    alert: str
    # trigger: an incident opened; resolve: it ended; notify: deaths, which never "resolve"
    action: Action
    text: str  # Slack mrkdwn
    summary: str  # one plain line: an e-mail subject, PagerDuty's summary
    incident_key: str  # the same for an incident's trigger and resolve
    label: str
    where: str  # the database, without credentials
    at: datetime
    value: float | None = None
    threshold: float | None = None

    @property
    def plain(self) -> str:
        """``text`` without Slack markup: for e-mail bodies and webhooks."""
        return plain_text(self.text)

    def to_json(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "action": self.action,
            "incident_key": self.incident_key,
            "summary": self.summary,
            "text": self.plain,
            "label": self.label,
            "database": self.where,
            "at": self.at.astimezone(UTC).isoformat(),
            "value": self.value,
            "threshold": self.threshold,
        }


class Channel(Protocol):
    """Where notices go (dispatchbox.observability: Slack, e-mail, PagerDuty, webhook)."""

    # The channel's row key in outbox_alert_state: slack | email | pagerduty | webhook.
    name: str
    # A pager takes incidents (trigger, resolve) only, not every batch of deaths.
    incidents_only: bool

    def send(self, notice: Notice) -> bool:
        """Deliver; True when the far end accepted it. Never raises, bounded by a timeout."""
        ...


_EMOJI = re.compile(r"^:[a-z_]+: ", re.MULTILINE)


def plain_text(text: str) -> str:
    """Slack mrkdwn as plain text: no leading emoji code, no bold, entities decoded."""
    out = _EMOJI.sub("", text)
    out = out.replace("*", "").replace("&lt;", "<").replace("&gt;", ">")
    return out.replace("&amp;", "&")


def escape(text: str) -> str:
    # Slack mrkdwn: &, < and > are control characters; masked errors contain "<n>".
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def code(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    return f"`{escape(flat)}`"


def duration(seconds: float) -> str:
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


def utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def incident_key(label: str, alert: str, opened_at: datetime) -> str:
    """One incident's key: the database's time it opened, so every host derives the same."""
    return f"dispatchbox/{label}/{alert}/{opened_at.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}"


def deaths_message(
    config: AlertConfig,
    where: str,
    since: datetime | None,
    by_type: list[dict[str, Any]],
    errors: list[dict[str, Any]],
) -> str:
    total = sum(int(r["count"]) for r in by_type)
    noun = "event" if total == 1 else "events"
    when = f" since {utc(since)}" if since is not None else ""
    lines = [
        f":rotating_light: *{escape(config.label)}*: {total:,} {noun} went dead{when} ({where})"
    ]
    shown = by_type[:10]
    parts = [f"{code(r['event_type'], 80)} {int(r['count']):,}" for r in shown]
    if len(by_type) > len(shown):
        parts.append(f"and {len(by_type) - len(shown)} more types")
    lines.append("*By event type:* " + " · ".join(parts))
    if errors:
        lines.append("*Top errors:*")
        for group in errors:
            ids = [int(i) for i in group["ids"] or []]
            more = "…" if int(group["count"]) > len(ids) else ""
            lines.append(
                f"• {int(group['count']):,}x {code(group['signature'] or '(no error recorded)')} "
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


def counted(status: OutboxStatus, state: str) -> str:
    """A state's count as db status shows it: ``~`` before an estimate, "more than N" when the
    table was never analysed (no estimate, only the count's cap)."""
    if state in status.estimated and status.analyzed_at is None:
        return f"more than {status.exact_below or 0:,}"
    mark = "~" if state in status.estimated else ""
    return f"{mark}{int(status.values.get(state) or 0):,}"


def firing_message(
    config: AlertConfig, where: str, alert: str, value: float, status: OutboxStatus
) -> str:
    label = escape(config.label)
    threshold = config.threshold(alert)
    if alert == "dead_count":
        return (
            f":warning: *{label}*: {int(value):,} events are dead, more than the threshold "
            f"of {int(threshold):,} ({where}). See `dispatchbox dead-events stats --by error`."
        )
    if alert == "dead_age":
        return (
            f":skull: *{label}*: the oldest dead event died {duration(value)} ago, more than "
            f"{duration(threshold)}: dead events are left unattended ({where}). "
            f"{counted(status, 'dead')} events are dead. Retry or purge them: "
            "`dispatchbox dead-events stats --by error`."
        )
    if alert == "breaker_open":
        return (
            f":electric_plug: *{label}*: a circuit breaker has been open for {duration(value)}, "
            f"more than {duration(threshold)}: a destination is down and its events wait "
            f"({where}). See `dispatchbox breakers list`."
        )
    if alert == "cleanup_held":
        return (
            f":broom: *{label}*: a transaction has held back vacuum of the outbox for "
            f"{duration(value)}, more than {duration(threshold)} ({where}): dead rows pile up "
            "and claims slow down. `dispatchbox db status` names the session; end it."
        )
    if alert == "dead_budget":
        return (
            f":fire: *{label}*: dead letters and late deliveries burn the error budget "
            f"{value:.1f}x too fast (threshold {threshold:g}x): "
            f"{100 * value * (1 - config.slo):.2f}% of the events finished in the last "
            f"{duration(config.burn_window)} went dead or were delivered more than "
            f"{duration(config.slo_seconds)} after they were created, against an SLO of "
            f"{100 * config.slo:g}% delivered within {duration(config.slo_seconds)} ({where}). "
            "See `dispatchbox dead-events diff --since <deploy>`, `dispatchbox dead-events "
            "stats --by error` and the backlog (`dispatchbox monitor`)."
        )
    return (
        f":hourglass: *{label}*: the oldest due pending event has waited "
        f"{duration(value)}, more than {duration(threshold)}: the dispatcher is stuck or "
        f"far behind ({where}). {counted(status, 'pending')} events pending, "
        f"{counted(status, 'running')} running. Are workers running?"
    )


def resolved_message(
    config: AlertConfig,
    where: str,
    alert: str,
    value: float,
    lasted: float | None,
) -> str:
    label = escape(config.label)
    after = f" after {duration(lasted)}" if lasted is not None else ""
    if alert == "dead_count":
        what = f"{int(value):,} events dead, at most {int(config.threshold(alert)):,}"
    elif alert == "dead_age":
        what = (
            f"the oldest dead event died {duration(value)} ago"
            if value > 0
            else "no dead event is left"
        )
    elif alert == "breaker_open":
        what = (
            f"the longest-open circuit breaker has been open {duration(value)}"
            if value > 0
            else "every circuit breaker is closed"
        )
    elif alert == "cleanup_held":
        what = f"the oldest snapshot holding back vacuum is {duration(value)} old"
    elif alert == "dead_budget":
        what = f"error-budget burn rate {value:.1f}x, within {config.threshold(alert):g}x"
    else:
        what = f"the oldest due pending event has waited {duration(value)}"
    return f":white_check_mark: *{label}*: resolved{after}: {what} ({where})."


def summary_line(text: str) -> str:
    """The first line of a message, plain and bounded: an e-mail subject."""
    first = plain_text(text).split("\n")[0]
    return first if len(first) <= 200 else first[:199] + "…"
