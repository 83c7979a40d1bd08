"""The new-error-group and dead-letter budget alerts, through the evaluator and the fake Slack
of test_alerts.py, on a real PostgreSQL."""

from __future__ import annotations

import psycopg

from tests.integration import test_alerts
from tests.integration.test_alerts import FakeSlack, evaluator, make_dead, rounds_until, state_row

slack = test_alerts.slack  # the fake Slack fixture


def test_a_new_error_group_is_announced_once(db_dsn: str, slack: FakeSlack) -> None:
    make_dead(db_dsn, "order.paid", "ConnectionError: refused 1", 3)
    ev = evaluator(db_dsn, slack, dead_window=-1, new_fingerprint=900)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        # More of the same group: not news. A group never seen before: news.
        make_dead(db_dsn, "order.paid", "ConnectionError: refused 2", 2)
        for _ in range(3):
            ev.run_once()
        assert len(slack.texts()) == 1
        make_dead(db_dsn, "order.paid", "ValueError: schema mismatch in 'v2'", 1)
        rounds_until(ev, lambda: len(slack.texts()) == 2)
    finally:
        ev.stop()
    first, second = slack.texts()
    assert "1 new error group appeared" in first and "ConnectionError: refused &lt;n&gt;" in first
    assert "3 dead" in first
    assert "ValueError: schema mismatch in '?'" in second and "refused" not in second
    assert "dead-events diff --since" in second


def test_dead_inflow_above_the_budget_opens_and_resolves_an_incident(
    db_dsn: str, slack: FakeSlack
) -> None:
    # 2 dead of 100 finished in the window: 2% against a 0.1% budget is a burn rate of 20.
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status, done_at)"
            " SELECT 'o', g::text, 't', 'done', now() FROM generate_series(1, 98) g"
        )
    ids = make_dead(db_dsn, "order.paid", "ConnectionError: refused", 2)
    ev = evaluator(db_dsn, slack, dead_window=-1, dead_burn_rate=14.4, slo=0.999, cooldown=0)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        assert state_row(db_dsn, "dead_budget")["active"] is True
        with psycopg.connect(db_dsn) as conn:  # redriven and delivered: 0 dead of 100
            conn.execute(
                "UPDATE outbox_event SET status = 'done', done_at = now(), dead_at = NULL"
                " WHERE id = ANY(%s)",
                [ids],
            )
        rounds_until(ev, lambda: len(slack.texts()) == 2)
    finally:
        ev.stop()
    firing, resolved = slack.texts()
    assert "burn the error budget 20.0x too fast" in firing and "2.00% of the events" in firing
    assert "SLO of 99.9% delivered" in firing
    assert "resolved" in resolved and "burn rate 0.0x, within 14.4x" in resolved
