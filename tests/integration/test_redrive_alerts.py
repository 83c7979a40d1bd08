"""The new-error-group and dead-letter budget alerts, through the evaluator and the fake Slack
of test_alerts.py, on a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alert_config import AlertConfig
from dispatchbox.maintenance.fingerprint_alert import burn_rate
from tests.integration import test_alerts
from tests.integration.test_alerts import FakeSlack, evaluator, make_dead, rounds_until, state_row
from tests.worker_helpers import FAST, counts, publish, start, wait_for_workers, wait_until

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


@pytest.mark.slow
def test_slow_deliveries_past_the_objective_burn_the_budget_and_fast_ones_do_not(
    db_dsn: str, slack: FakeSlack, record_dir: Path, tmp_path: Path
) -> None:
    # Real workers of tests/ordering_app.py: "plain.ok" sleeps payload["sleep"] seconds. The
    # objective: 99.9% delivered within 2 s of created_at.
    run = start(
        db_dsn, record_dir, tmp_path, "--app", "tests.ordering_app:dispatcher",
        *FAST, "--processes", "1", "--concurrency", "8",
    )  # fmt: skip
    ev = evaluator(
        db_dsn, slack, dead_window=-1, dead_burn_rate=14.4, slo=0.999, slo_seconds=2.0,
        cooldown=0,
    )  # fmt: skip
    try:
        # Publish once the worker is up: events waiting for it to start would be late already.
        wait_for_workers(run, 1)
        publish(db_dsn, "plain.ok", 20, payload={"sleep": 0.01})
        wait_until(lambda: counts(db_dsn) == {"done": 20}, 60, "fast events delivered")
        with psycopg.connect(db_dsn) as conn:
            assert burn_rate(conn, ev.config) == 0.0, "fast deliveries burn nothing"
        for _ in range(3):
            ev.run_once()
        assert slack.texts() == []
        # 8 events that each take 3 s in the handler: delivered after the objective.
        publish(db_dsn, "plain.ok", 8, payload={"sleep": 3.0})
        wait_until(lambda: counts(db_dsn) == {"done": 28}, 60, "slow events delivered")
        with psycopg.connect(db_dsn) as conn:
            late = conn.execute(
                "SELECT count(*) FROM outbox_event WHERE done_at > created_at + interval '2 s'"
            ).fetchone()
            rate = burn_rate(conn, ev.config)
        assert late == (8,)
        # 8 of 28 finished events missed it: 28.6% against a 0.1% budget.
        assert rate == pytest.approx((8 / 28) / 0.001)
        rounds_until(ev, lambda: len(slack.texts()) == 1)
    finally:
        ev.stop()
        run.stop()
    (firing,) = slack.texts()
    assert "burn the error budget 285.7x too fast" in firing
    assert "went dead or were delivered more than 2s after they were created" in firing
    assert "SLO of 99.9% delivered within 2s" in firing
    assert state_row(db_dsn, "dead_budget")["active"] is True


def test_the_objective_comes_from_the_environment_and_must_be_positive() -> None:
    assert AlertConfig().slo_seconds == 300.0
    config = AlertConfig.from_env({"DISPATCHBOX_ALERT_SLO_SECONDS": "60"})
    assert config.slo_seconds == 60.0
    with pytest.raises(ConfigurationError, match="DISPATCHBOX_ALERT_SLO_SECONDS must be positive"):
        AlertConfig.from_env({"DISPATCHBOX_ALERT_SLO_SECONDS": "0"})


def test_a_redriven_event_is_late_from_its_redrive_not_from_its_birth(db_dsn: str) -> None:
    # An outage's dead events already burned the budget once when they died; delivered within
    # the objective after a redrive, they must not burn it again (a mass redrive would page).
    config = AlertConfig(dead_burn_rate=14.4, slo=0.999, slo_seconds=300.0)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status,"
            " created_at, done_at, redrive_count, last_redriven_at)"
            " SELECT 'o', g::text, 't', 'done', now() - interval '2 hours', now(), 1,"
            " now() - interval '10 seconds' FROM generate_series(1, 50) g"
        )
        assert burn_rate(conn, config) == 0.0
        # Two hours from birth to delivery with no redrive: late, and every one of them.
        conn.execute("UPDATE outbox_event SET redrive_count = 0, last_redriven_at = NULL")
        assert burn_rate(conn, config) == pytest.approx(1 / 0.001)
