"""Two alerts of the evaluator (maintenance/alerts.py): ``new_fingerprint``, a notification
when an error group appears that no dead event ever had (outbox_error_fingerprint_seen,
migration 0011), and the measure of ``dead_budget``: dead letters and late deliveries as a
burn rate of the error budget of the objective "slo of events delivered within slo_seconds".
Kept apart so alerts.py only dispatches to them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from dispatchbox.data import alerts as data
from dispatchbox.maintenance.alert_config import AlertConfig
from dispatchbox.maintenance.alert_text import Notice, escape, incident_key, summary_line

if TYPE_CHECKING:
    from dispatchbox.maintenance.alerts import AlertEvaluator, _State

# Groups listed in one message.
TOP = 10


def burn_rate(conn: psycopg.Connection[Any], config: AlertConfig) -> float:
    return data.dead_burn_rate(
        conn, window=config.burn_window, slo=config.slo, objective=config.slo_seconds
    )


def message(config: AlertConfig, where: str, groups: list[dict[str, Any]]) -> str:
    label = escape(config.label)
    lines = [
        f":new: *{label}*: {len(groups)} new error group{'s' if len(groups) > 1 else ''} "
        f"appeared ({where}):"
    ]
    for g in groups:
        lines.append(
            f"• `{g['fingerprint']}` {escape(g['event_type'])}: "
            f"{escape(g['signature'] or '(no error)')} ({int(g['dead']):,} dead, e.g. "
            f"{g['example_event_id']})"
        )
    lines.append(
        "What changed since the deploy: `dispatchbox dead-events diff --since DEPLOY_TIME`"
    )
    return "\n".join(lines)


def evaluate(evaluator: AlertEvaluator, conn: psycopg.Connection[Any], state: _State) -> bool:
    """One round: announce the groups first seen since the cursor, once each."""
    cfg = evaluator.config
    upto = state.now - timedelta(seconds=cfg.settle)
    after = state.cursor_at or (upto - timedelta(seconds=cfg.new_fingerprint))
    if upto <= after:
        evaluator._save(conn, state)
        return False
    groups = data.new_fingerprints(
        conn, after=after, upto=upto, window=cfg.new_fingerprint, top=TOP
    )
    if not groups:
        state.cursor_at = upto
        evaluator._save(conn, state)
        return False
    text = message(cfg, evaluator.where, groups)
    notice = Notice(
        alert="new_fingerprint",
        action="notify",
        text=text,
        summary=summary_line(text),
        incident_key=incident_key(cfg.label, "new_fingerprint", upto),
        label=cfg.label,
        where=evaluator.where,
        at=state.now,
        value=float(len(groups)),
    )
    if not evaluator._send(notice):
        evaluator._save(conn, state, failed=1)
        return False
    # Up to the newest group announced: more than TOP at once are announced next round.
    state.cursor_at = groups[-1]["first_seen_at"] if len(groups) == TOP else upto
    state.last_sent_at = state.now
    evaluator._save(conn, state, sent=1)
    return True
