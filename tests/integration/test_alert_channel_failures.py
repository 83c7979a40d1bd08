"""A channel that cannot be built or whose settings are malformed: `dispatchbox worker` refuses
to start with one line, and a worker process whose channel breaks later runs without alerts
instead of crashing (a failing channel never stops dispatch). Real CLI, real PostgreSQL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.test_alert_channels import (
    HOOK_SECRET,
    ROUTING_KEY,
    Endpoint,
    Smtp,
    evaluator,
    pd_sender,
    redrive_all,
    rounds_until,
    state,
)
from tests.integration.test_alert_channels import pagerduty as pagerduty  # the fixture
from tests.integration.test_alert_channels import smtp as smtp  # the fixture
from tests.integration.test_alerts import make_dead
from tests.worker_helpers import counts, publish, records, start, wait_until

EMAIL = {"DISPATCHBOX_SMTP_HOST": "127.0.0.1", "DISPATCHBOX_ALERT_EMAIL_TO": "oncall@example.com"}


def _refused(db_dsn: str, env: dict[str, str]) -> list[str]:
    result = run_cli(
        "worker", "--app", "tests.worker_app:dispatcher", "--processes", "1", dsn=db_dsn, env=env
    )
    assert result.code == 2, result.stderr
    assert result.stdout == ""
    return result.stderr.strip().splitlines()


def test_worker_refuses_a_missing_or_non_pem_smtp_ca_file(db_dsn: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    lines = _refused(db_dsn, {**EMAIL, "DISPATCHBOX_SMTP_CA_FILE": missing})
    assert len(lines) == 1 and lines[0].startswith("dispatchbox: error: DISPATCHBOX_SMTP_CA_FILE")
    assert missing in lines[0] and "No such file" in lines[0]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    lines = _refused(db_dsn, {**EMAIL, "DISPATCHBOX_SMTP_CA_FILE": str(garbage)})
    assert len(lines) == 1 and lines[0].startswith("dispatchbox: error: DISPATCHBOX_SMTP_CA_FILE")


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("DISPATCHBOX_ALERT_WEBHOOK_URL", "https://[::1/x"),
        ("DISPATCHBOX_ALERT_WEBHOOK_URL", "http://"),
        ("DISPATCHBOX_ALERT_WEBHOOK_URL", "http://example.com:70000/x"),
        ("DISPATCHBOX_PAGERDUTY_URL", "https://[::1/x"),
        ("DISPATCHBOX_PAGERDUTY_URL", "http://"),
        ("DISPATCHBOX_PAGERDUTY_URL", "http://example.com:70000/x"),
    ],
)
def test_worker_refuses_a_malformed_channel_url(db_dsn: str, name: str, url: str) -> None:
    env = {name: url}
    if name == "DISPATCHBOX_ALERT_WEBHOOK_URL":
        env["DISPATCHBOX_ALERT_WEBHOOK_SECRET"] = HOOK_SECRET
    else:
        env["DISPATCHBOX_PAGERDUTY_ROUTING_KEY"] = ROUTING_KEY
    lines = _refused(db_dsn, env)
    assert len(lines) == 1 and lines[0].startswith(f"dispatchbox: error: {name}"), lines
    assert "Traceback" not in "\n".join(lines)


def test_a_worker_whose_channel_breaks_later_runs_without_alerts(
    db_dsn: str, smtp: Smtp, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(smtp.ca_file).read_bytes())
    env = {
        **EMAIL,
        "DISPATCHBOX_SMTP_PORT": str(smtp.port),
        "DISPATCHBOX_SMTP_CA_FILE": str(ca_file),
        "DISPATCHBOX_ALERT_PENDING_AGE_SECONDS": "-1",
    }
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run = start(db_dsn, record_dir, tmp_path, "--processes", "1")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        publish(db_dsn, "test.ok", 1)
        wait_until(lambda: counts(db_dsn) == {"done": 1}, 60, "the first event done")
        first_pid = records(record_dir)[0][3]
        # The CA bundle goes bad after the supervisor's check: the restarted process cannot
        # build its e-mail channel.
        ca_file.write_text("not a certificate any more\n")
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: "alerts_unavailable" in run.log(), 60, "the restarted process's line")
        publish(db_dsn, "test.ok", 5)
        wait_until(lambda: counts(db_dsn) == {"done": 6}, 60, "events done after the restart")
        assert run.proc.poll() is None
    finally:
        code = run.stop()
    log = run.log()
    assert code == 0, log
    later = {pid for _, _, _, pid, _ in records(record_dir)} - {first_pid}
    assert later, "the restarted process did the later events"
    assert log.count("alerts_unavailable") == 1, log
    assert "Traceback" not in log
    assert log.count("worker_process_died") == 1, log  # the kill, and no crash loop after it


def test_a_pagerduty_trigger_retried_after_a_timeout_keeps_its_dedup_key(
    db_dsn: str, pagerduty: Endpoint
) -> None:
    make_dead(db_dsn, "order.paid", "RuntimeError: x", 3)
    pagerduty.open.clear()  # the first POST arrives and is never answered in time
    ev = evaluator(db_dsn, pd_sender(pagerduty, timeout=3), dead_threshold=2)
    try:
        assert ev.run_once() == []  # timed out: a failed send
        assert len(pagerduty.requests) == 1 and pagerduty.answered == 0
        row = state(db_dsn, "dead_count", "pagerduty")
        assert row is not None and not row["active"] and row["opened_at"] is not None
        pagerduty.open.set()  # PagerDuty answers again
        rounds_until(
            [ev], lambda: bool((state(db_dsn, "dead_count", "pagerduty") or {}).get("active"))
        )
        assert len(pagerduty.requests) == 2  # the retry was accepted
        redrive_all(db_dsn)
        rounds_until([ev], lambda: len(pagerduty.requests) >= 3)
    finally:
        ev.stop()
    first, retry, resolve = pagerduty.bodies()
    assert [first["event_action"], retry["event_action"], resolve["event_action"]] == [
        "trigger",
        "trigger",
        "resolve",
    ]
    assert first["dedup_key"] == retry["dedup_key"] == resolve["dedup_key"]
