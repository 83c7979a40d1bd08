"""Slack alerting against a real PostgreSQL and a local HTTP server standing in for Slack.

slack-sdk itself talks to the fake (an incoming-webhook URL, or the Web API base for a bot
token), so what is asserted is what Slack would have received.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alerts import AlertConfig, AlertEvaluator
from dispatchbox.observability.slack import SlackConfig, SlackSender
from dispatchbox.tempcluster import free_port
from tests.conftest import run_cli
from tests.worker_helpers import WorkerRun, counts, publish, wait_until

SECRET_PATH = "/services/T0000/B0000/SeCrEtWeBhOoKpAtH"
BOT_TOKEN = "xoxb-0000-1111-SeCrEtBoTtOkEn"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


@dataclass
class FakeSlack:
    """Records every POST; answers ok, an error status, or late."""

    server: ThreadingHTTPServer | None = None
    received: list[Received] = field(default_factory=list)
    status: int = 200
    fail_next: int = 0  # answer this many requests with 500 first
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def webhook_url(self) -> str:
        return self.base + SECRET_PATH

    def texts(self) -> list[str]:
        with self.lock:
            return [str(r.body.get("text", "")) for r in self.received]


def _handler(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            try:
                body = json.loads(raw)
            except ValueError:
                body = {"raw": raw}
            with fake.lock:
                fake.received.append(Received(self.path, dict(self.headers), body, time.time()))
                failing = fake.fail_next > 0
                if failing:
                    fake.fail_next -= 1
            if fake.delay:
                time.sleep(fake.delay)
            status = 500 if failing else fake.status
            if self.path.startswith("/api/"):
                payload = {"ok": status == 200}
                if status != 200:
                    payload["error"] = "fatal_error"
                data = json.dumps(payload).encode()
                ctype = "application/json"
                status = 200 if self.path.startswith("/api/") and status != 500 else status
            else:
                data = b"ok" if status == 200 else b"no_service"
                ctype = "text/plain"
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): what a slow Slack looks like

    return Handler


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack()
    fake.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.server.daemon_threads = True
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def make_dead(
    dsn: str,
    event_type: str,
    error: str | list[str],
    n: int = 1,
    *,
    aggregate_type: str = "order",
    dead_seconds_ago: float = 2.0,
) -> list[int]:
    errors = error if isinstance(error, list) else [error] * n
    with psycopg.connect(dsn) as conn:
        ids = publish_many(
            conn,
            [
                {
                    "aggregate_type": aggregate_type,
                    "aggregate_id": str(i),
                    "event_type": event_type,
                    "payload": {},
                    "max_attempts": 3,
                }
                for i in range(len(errors))
            ],
        )
        for event_id, text in zip(ids, errors, strict=True):
            conn.execute(
                "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
                "last_error = %s, last_error_at = now(), "
                "dead_at = now() - make_interval(secs => %s) WHERE id = %s",
                [text, dead_seconds_ago, event_id],
            )
        conn.commit()
    return ids


def state_row(dsn: str, alert: str) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("SELECT * FROM outbox_alert_state WHERE alert = %s", [alert])
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def evaluator(dsn: str, slack: FakeSlack, **config: Any) -> AlertEvaluator:
    settings = {
        "interval": 0.05,
        "dead_window": 60.0,
        "dead_threshold": -1,
        "pending_age": -1,
        "settle": 0.0,
        **config,
    }
    sender = SlackSender(SlackConfig(webhook_url=slack.webhook_url, timeout=2))
    return AlertEvaluator(dsn, sender, AlertConfig(**settings), name=f"test:{id(slack)}")


def rounds_until(ev: AlertEvaluator, predicate: Any, timeout: float = 10.0) -> None:
    """Run evaluation rounds (each after the interval) until predicate() holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev.run_once()
        if predicate():
            return
        time.sleep(ev.config.interval * 1.5)
    raise AssertionError("timed out waiting for the alert condition")


def one_round(dsn: str, ev: AlertEvaluator, alert: str, timeout: float = 10.0) -> list[str]:
    """Rounds until one of them evaluates ``alert`` (the database records each evaluation in
    evaluated_at; a round within the interval skips the alert): what those rounds sent."""
    before = state_row(dsn, alert)["evaluated_at"]
    sent: list[str] = []

    def evaluated() -> bool:
        sent.extend(ev.run_once())
        return state_row(dsn, alert)["evaluated_at"] != before

    wait_until(evaluated, timeout, f"a round that evaluates {alert}", step=ev.config.interval / 2)
    return sent


def wait_for_evaluations(dsn: str, alert: str, n: int, timeout: float) -> None:
    """Until ``alert`` has been evaluated n more times, by any process (polled at a fraction of
    the tests' intervals, so each evaluation's evaluated_at is seen)."""
    seen = {state_row(dsn, alert)["evaluated_at"]}
    first = len(seen)

    def evaluated() -> bool:
        seen.add(state_row(dsn, alert)["evaluated_at"])
        return len(seen) - first >= n

    wait_until(evaluated, timeout, f"{n} more evaluations of {alert}", step=0.05)


def wait_past_window(dsn: str, alert: str, seconds: float, timeout: float = 10.0) -> None:
    """Until the database's clock is ``seconds`` past the alert's last message."""

    def passed() -> bool:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT now() >= last_sent_at + make_interval(secs => %s) "
                "FROM outbox_alert_state WHERE alert = %s",
                [seconds, alert],
            ).fetchone()
        return bool(row and row[0])

    wait_until(passed, timeout, f"{seconds}s past the last {alert} message", step=0.05)


# -- "events went dead" ----------------------------------------------------------------------


def test_deaths_message_counts_types_and_top_errors_with_ids(db_dsn: str, slack: FakeSlack) -> None:
    pay = make_dead(
        db_dsn,
        "payment.captured",
        [f"ConnectionError: gateway refused order {1000 + i}" for i in range(4)],
    )
    mail = make_dead(db_dsn, "mail.sent", 'SMTPError: mailbox "bob@example.com" full', 2)
    ev = evaluator(db_dsn, slack)
    try:
        assert ev.run_once() == ["dead_events"]
        assert ev.run_once() == []  # within the window: nothing new to say
    finally:
        ev.stop()
    (text,) = slack.texts()
    assert "6 events went dead" in text
    assert "`payment.captured` 4" in text and "`mail.sent` 2" in text
    # The masked error, escaped for Slack, with its fingerprint and the ids to retry.
    assert "4x `ConnectionError: gateway refused order &lt;n&gt;`" in text
    assert 'SMTPError: mailbox "?" full' in text
    assert "ids " + ", ".join(map(str, pay)) in text
    assert f"retry-batch {' '.join(map(str, pay))}" in text
    assert all(str(i) in text for i in mail)
    # Masked: no order number, no e-mail address reaches Slack.
    assert "1001" not in text and "bob@example.com" not in text
    row = state_row(db_dsn, "dead_events")
    assert row["messages_sent"] == 1 and row["send_failures"] == 0


@pytest.mark.slow
def test_next_window_reports_only_the_new_deaths(db_dsn: str, slack: FakeSlack) -> None:
    make_dead(db_dsn, "a.first", "RuntimeError: first wave", 3)
    ev = evaluator(db_dsn, slack, dead_window=1.0)
    try:
        assert ev.run_once() == ["dead_events"]
        later = make_dead(db_dsn, "b.second", "RuntimeError: second wave", 2, dead_seconds_ago=0)
        assert ev.run_once() == []  # the window (1 s) has not passed
        rounds_until(ev, lambda: len(slack.texts()) == 2)
    finally:
        ev.stop()
    first, second = slack.texts()
    assert "3 events went dead" in first and "a.first" in first
    assert "2 events went dead" in second and "b.second" in second and "a.first" not in second
    assert all(str(i) in second for i in later)
    wait_past_window(db_dsn, "dead_events", 1.0)  # a new window: unreported deaths would go now
    ev2 = evaluator(db_dsn, slack, dead_window=1.0)
    try:
        ev2.run_once()  # a new process: the database says all was reported
    finally:
        ev2.stop()
    assert len(slack.texts()) == 2


def test_deaths_before_alerting_started_are_not_news(db_dsn: str, slack: FakeSlack) -> None:
    make_dead(db_dsn, "old.event", "RuntimeError: long ago", 2, dead_seconds_ago=3600)
    ev = evaluator(db_dsn, slack)
    try:
        assert ev.run_once() == []
    finally:
        ev.stop()
    assert slack.texts() == []


# -- threshold incidents -----------------------------------------------------------------------


def test_dead_count_fires_once_resolves_once_and_cooldown_holds_a_relapse(
    db_dsn: str, slack: FakeSlack
) -> None:
    ids = make_dead(db_dsn, "x.dead", "RuntimeError: boom", 3)
    ev = evaluator(db_dsn, slack, dead_window=-1, dead_threshold=2, cooldown=3600)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        for _ in range(3):  # still above: the open incident says nothing more
            assert one_round(db_dsn, ev, "dead_count") == []
        assert state_row(db_dsn, "dead_count")["active"] is True
        with psycopg.connect(db_dsn) as conn:
            conn.execute(
                "UPDATE outbox_event SET status = 'done', done_at = now(), "
                "dead_at = NULL WHERE id = %s",
                [ids[0]],
            )
        rounds_until(ev, lambda: len(slack.texts()) == 2)
        make_dead(db_dsn, "x.dead", "RuntimeError: boom", 1)  # above again, within cooldown
        for _ in range(3):
            assert one_round(db_dsn, ev, "dead_count") == []
    finally:
        ev.stop()
    firing, resolved = slack.texts()
    assert "3 events are dead, more than the threshold of 2" in firing
    assert "resolved" in resolved and "2 events dead, at most 2" in resolved
    row = state_row(db_dsn, "dead_count")
    assert row["active"] is False and row["messages_sent"] == 2


def test_dead_count_relapse_after_cooldown_is_a_new_incident(db_dsn: str, slack: FakeSlack) -> None:
    ids = make_dead(db_dsn, "x.dead", "RuntimeError: boom", 2)
    ev = evaluator(db_dsn, slack, dead_window=-1, dead_threshold=1, cooldown=0.3)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        with psycopg.connect(db_dsn) as conn:
            conn.execute(
                "UPDATE outbox_event SET status = 'pending', dead_at = NULL, "
                "attempts = 0 WHERE id = %s",
                [ids[0]],
            )
        rounds_until(ev, lambda: len(slack.texts()) == 2)
        make_dead(db_dsn, "x.dead", "RuntimeError: boom", 1)
        rounds_until(ev, lambda: len(slack.texts()) == 3)
    finally:
        ev.stop()
    assert [t.split("*")[2][:12] for t in slack.texts()] == [
        ": 2 events a",
        ": resolved a",
        ": 2 events a",
    ]


def test_pending_age_says_the_dispatcher_is_stuck_then_resolves(
    db_dsn: str, slack: FakeSlack
) -> None:
    with psycopg.connect(db_dsn) as conn:
        ids = publish_many(
            conn,
            [
                {"aggregate_type": "o", "aggregate_id": str(i), "event_type": "t", "payload": {}}
                for i in range(3)
            ],
        )
        conn.execute("UPDATE outbox_event SET next_attempt_at = now() - interval '20 minutes'")
    ev = evaluator(db_dsn, slack, dead_window=-1, pending_age=600)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        with psycopg.connect(db_dsn) as conn:
            conn.execute(
                "UPDATE outbox_event SET status = 'done', done_at = now() WHERE id = ANY(%s)",
                [ids],
            )
        rounds_until(ev, lambda: len(slack.texts()) == 2)
    finally:
        ev.stop()
    stuck, resolved = slack.texts()
    assert "oldest due pending event has waited 20m" in stuck and "3 events pending" in stuck
    assert "more than 10m" in stuck
    assert "resolved after" in resolved


def test_pending_age_on_a_big_backlog_reports_the_estimate_as_db_status_does(
    db_dsn: str, slack: FakeSlack
) -> None:
    # Above 10,000 events a state the message takes db status's estimate (marked ~) rather than
    # counting the backlog exactly: the outbox_health view took 1.6 s on 10,000,000 pending.
    with psycopg.connect(db_dsn) as conn:
        publish_many(
            conn,
            [
                {"aggregate_type": "o", "aggregate_id": str(i), "event_type": "t", "payload": {}}
                for i in range(20_000)
            ],
        )
        conn.execute("UPDATE outbox_event SET next_attempt_at = now() - interval '20 minutes'")
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("ANALYZE outbox_event")
    ev = evaluator(db_dsn, slack, dead_window=-1, pending_age=600)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
    finally:
        ev.stop()
    (stuck,) = slack.texts()
    assert "~20,000 events pending, 0 running" in stuck


def test_breaker_open_too_long_fires_then_resolves_when_it_closes(
    db_dsn: str, slack: FakeSlack
) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_breaker (destination, state, opened_at) "
            "VALUES ('ledger', 'open', now() - interval '10 minutes')"
        )
    ev = evaluator(db_dsn, slack, dead_window=-1, breaker_open=300)
    try:
        rounds_until(ev, lambda: len(slack.texts()) == 1)
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute("UPDATE outbox_breaker SET state = 'closed'")
        rounds_until(ev, lambda: len(slack.texts()) == 2)
    finally:
        ev.stop()
    fired, resolved = slack.texts()
    assert "circuit breaker has been open for 10m" in fired and "more than 5m" in fired
    assert "dispatchbox breakers list" in fired
    assert "resolved after" in resolved and "every circuit breaker is closed" in resolved


# -- one message across processes ----------------------------------------------------------------


def test_racing_evaluators_on_separate_connections_send_one_message(
    db_dsn: str, slack: FakeSlack
) -> None:
    make_dead(db_dsn, "race.event", "RuntimeError: race", 5)
    evaluators = [evaluator(db_dsn, slack, interval=0.05, dead_threshold=0) for _ in range(4)]
    slack.delay = 0.3  # a slow Slack keeps the row locked while the others try
    stop = time.monotonic() + 2.0

    def hammer(ev: AlertEvaluator) -> None:
        while time.monotonic() < stop:
            ev.run_once()
            time.sleep(0.01)

    threads = [threading.Thread(target=hammer, args=(ev,)) for ev in evaluators]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ev in evaluators:
        ev.stop()
    texts = slack.texts()
    assert len([t for t in texts if "went dead" in t]) == 1, texts
    assert len([t for t in texts if "more than the threshold" in t]) == 1, texts
    assert len(texts) == 2


@pytest.mark.slow
def test_two_worker_hosts_send_one_message_for_one_incident(
    db_dsn: str, slack: FakeSlack, tmp_path: Path
) -> None:
    """Two supervisors (as if on two hosts), two worker processes each: one Slack message."""
    env = {
        "DISPATCHBOX_SLACK_WEBHOOK_URL": slack.webhook_url,
        "DISPATCHBOX_ALERT_INTERVAL_SECONDS": "0.3",
        "DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS": "600",
        "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "-1",
        "DISPATCHBOX_ALERT_PENDING_AGE_SECONDS": "-1",
    }
    records = tmp_path / "records"
    records.mkdir()
    fast = [
        "--processes",
        "2",
        "--backoff-base",
        "0.05",
        "--backoff-max",
        "0.1",
        "--poll-interval",
        "0.2",
    ]
    runs = [_worker(db_dsn, records, tmp_path / f"w{i}.log", env, *fast) for i in range(2)]
    try:
        wait_until(lambda: _log_has(runs, "alerts_started", 4), 60, "4 evaluators started")
        publish(db_dsn, "test.always_fail", 20, max_attempts=2)
        publish(db_dsn, "test.ok", 50)
        wait_until(lambda: counts(db_dsn) == {"dead": 20, "done": 50}, 60, "events finished")
        wait_until(lambda: len(slack.texts()) >= 1, 30, "a Slack message")
        # Ten more evaluations, by either host, for a second message to (not) appear.
        wait_for_evaluations(db_dsn, "dead_events", 10, 30)
    finally:
        for run in runs:
            assert run.stop() == 0, run.log()
    texts = slack.texts()
    assert len(texts) == 1, texts
    # The first deaths are announced at once; later ones wait for the next window (600 s).
    assert re.search(r"\*: (\d+) events? went dead", texts[0])
    assert "`test.always_fail`" in texts[0]
    row = state_row(db_dsn, "dead_events")
    assert row["messages_sent"] == 1
    for run in runs:
        assert SECRET_PATH not in run.log()


@pytest.mark.slow
def test_a_hanging_slack_never_slows_dispatch(
    db_dsn: str, slack: FakeSlack, tmp_path: Path
) -> None:
    slack.delay = 30.0  # never answers in time
    env = {
        "DISPATCHBOX_SLACK_WEBHOOK_URL": slack.webhook_url,
        "DISPATCHBOX_SLACK_TIMEOUT": "1",
        "DISPATCHBOX_ALERT_INTERVAL_SECONDS": "0.2",
        "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "0",
    }
    records = tmp_path / "records"
    records.mkdir()
    run = _worker(
        db_dsn,
        records,
        tmp_path / "w.log",
        env,
        "--processes",
        "2",
        "--backoff-base",
        "0.05",
        "--backoff-max",
        "0.1",
        "--poll-interval",
        "0.2",
    )
    try:
        wait_until(lambda: _log_has([run], "alerts_started", 2), 60, "evaluators started")
        publish(db_dsn, "test.always_fail", 10, max_attempts=1)
        wait_until(lambda: len(slack.received) >= 1, 30, "a first (hanging) Slack request")
        started = time.monotonic()
        publish(db_dsn, "test.ok", 2000)
        wait_until(lambda: counts(db_dsn)["done"] == 2000, 60, "2000 events done")
        elapsed = time.monotonic() - started
        # More failed sends, each bounded by the 1 s timeout (waited for, not slept on: how
        # many fit in a fixed pause depends on how busy the machine is).
        wait_until(
            lambda: state_row(db_dsn, "dead_events")["send_failures"] >= 2,
            30,
            "a second failed send",
        )
    finally:
        assert run.stop() == 0, run.log()
    # 2000 trivial events take well under the Slack delay (30 s) on this machine.
    assert elapsed < 20, f"dispatch took {elapsed:.1f}s while Slack hung"
    log = run.log()
    assert 1 <= log.count("slack_delivery_failed ") <= 2, "one failure line per process"
    assert SECRET_PATH not in log
    assert state_row(db_dsn, "dead_events")["send_failures"] >= 2


def _worker(dsn: str, records: Path, log: Path, env: dict[str, str], *args: str) -> WorkerRun:
    import os

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return WorkerRun(dsn, records, *args, log=log)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _log_has(runs: list[WorkerRun], text: str, n: int) -> bool:
    return sum(run.log().count(text) for run in runs) >= n


# -- Slack failures, the bot token, secrets ------------------------------------------------


def test_failed_send_is_retried_next_round_and_logged_once(
    db_dsn: str, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    make_dead(db_dsn, "f.event", "RuntimeError: down", 2)
    slack.fail_next = 3
    ev = evaluator(db_dsn, slack)
    with caplog.at_level(logging.DEBUG, logger="dispatchbox"):
        try:
            rounds_until(ev, lambda: len(slack.received) == 4)
        finally:
            ev.stop()
    assert len(slack.received) == 4, "three refused, the fourth delivered"
    assert "2 events went dead" in slack.texts()[-1]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage().split()[0] for r in warnings] == ["slack_delivery_failed"]
    assert any("slack_delivery_recovered" in r.getMessage() for r in caplog.records)
    assert all(SECRET_PATH not in r.getMessage() for r in caplog.records)
    row = state_row(db_dsn, "dead_events")
    assert row["send_failures"] == 3 and row["messages_sent"] == 1


def test_a_refused_connection_is_logged_once_too(caplog: pytest.LogCaptureFixture) -> None:
    sender = SlackSender(SlackConfig(webhook_url=f"http://127.0.0.1:{free_port()}/x", timeout=2))
    with caplog.at_level(logging.DEBUG):
        assert [sender.send("a"), sender.send("b"), sender.send("c")] == [False] * 3
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1 and loud[0].startswith("slack_delivery_failed"), loud


def test_bot_token_posts_to_the_channel(db_dsn: str, slack: FakeSlack) -> None:
    make_dead(db_dsn, "bot.event", "RuntimeError: via bot", 1)
    config = SlackConfig(token=BOT_TOKEN, channel="#ops-alerts", api_url=slack.base + "/api/")
    ev = AlertEvaluator(db_dsn, SlackSender(config), AlertConfig(settle=0, interval=0.05))
    try:
        assert ev.run_once() == ["dead_events"]
    finally:
        ev.stop()
    (req,) = slack.received
    assert req.path == "/api/chat.postMessage"
    assert req.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
    assert req.body["channel"] == "#ops-alerts" and "1 event went dead" in req.body["text"]


def test_slack_errors_never_log_the_token_or_webhook(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    slack.status = 404
    with caplog.at_level(logging.DEBUG):
        hook = SlackSender(SlackConfig(webhook_url=slack.webhook_url, timeout=2))
        assert hook.send("hello") is False
        bot = SlackSender(
            SlackConfig(token=BOT_TOKEN, channel="#c", api_url=slack.base + "/api/", timeout=2)
        )
        assert bot.send("hello") is False
        closed = SlackSender(SlackConfig(webhook_url="http://127.0.0.1:9" + SECRET_PATH))
        assert closed.send("hello") is False
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "slack_delivery_failed" in logged
    assert SECRET_PATH not in logged and "SeCrEt" not in logged
    assert BOT_TOKEN not in logged
    assert "SeCrEt" not in repr(SlackConfig(token=BOT_TOKEN, channel="#c"))


def test_a_slow_slack_costs_at_most_the_timeout(slack: FakeSlack) -> None:
    slack.delay = 5.0
    sender = SlackSender(SlackConfig(webhook_url=slack.webhook_url, timeout=1))
    started = time.monotonic()
    assert sender.send("hello") is False
    assert time.monotonic() - started < 3


# -- configuration -----------------------------------------------------------------------------


def test_configuration_from_the_environment() -> None:
    assert SlackConfig.from_env({}) is None
    hook = SlackConfig.from_env({"DISPATCHBOX_SLACK_WEBHOOK_URL": "https://hooks.example/x"})
    assert hook is not None and hook.destination == "incoming webhook"
    with pytest.raises(ConfigurationError, match="needs DISPATCHBOX_SLACK_CHANNEL"):
        SlackConfig.from_env({"DISPATCHBOX_SLACK_TOKEN": BOT_TOKEN})
    with pytest.raises(ConfigurationError, match="not both"):
        SlackConfig.from_env(
            {
                "DISPATCHBOX_SLACK_TOKEN": BOT_TOKEN,
                "DISPATCHBOX_SLACK_WEBHOOK_URL": "https://x",
                "DISPATCHBOX_SLACK_CHANNEL": "#c",
            }
        )
    config = AlertConfig.from_env(
        {
            "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "50",
            "DISPATCHBOX_ALERT_PENDING_AGE_SECONDS": "-1",
            "DISPATCHBOX_ALERT_LABEL": "prod-eu",
        }
    )
    assert config.dead_threshold == 50 and config.label == "prod-eu"
    assert config.enabled() == [
        "dead_events",
        "dead_count",
        "dead_age",
        "breaker_open",
        "cleanup_held",
    ]
    with pytest.raises(ConfigurationError, match="DISPATCHBOX_ALERT_INTERVAL_SECONDS"):
        AlertConfig.from_env({"DISPATCHBOX_ALERT_INTERVAL_SECONDS": "soon"})


def test_worker_refuses_bad_alert_settings_in_one_line(db_dsn: str) -> None:
    result = run_cli(
        "worker",
        "--app",
        "tests.worker_app:dispatcher",
        "--processes",
        "1",
        dsn=db_dsn,
        env={"DISPATCHBOX_SLACK_TOKEN": BOT_TOKEN, "DISPATCHBOX_SLACK_CHANNEL": ""},
    )
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "dispatchbox: error: DISPATCHBOX_SLACK_TOKEN needs DISPATCHBOX_SLACK_CHANNEL"
    ]
    assert BOT_TOKEN not in result.stderr


@pytest.mark.slow
def test_serve_evaluates_alerts_too(
    db_dsn: str, slack: FakeSlack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.acceptance.test_api import Server

    make_dead(db_dsn, "served.event", "RuntimeError: noticed by serve", 3)
    for name, value in {
        "DISPATCHBOX_SLACK_WEBHOOK_URL": slack.webhook_url,
        "DISPATCHBOX_ALERT_INTERVAL_SECONDS": "0.3",
        "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "2",
    }.items():
        monkeypatch.setenv(name, value)
    srv = Server(db_dsn, tmp_path / "serve.log", "--insecure-no-auth", token=None, keep_env=True)
    try:
        wait_until(lambda: len(slack.texts()) >= 2, 30, "two Slack messages")
        # Three more evaluations for a third message to (not) appear, and metrics that say so.
        wait_for_evaluations(db_dsn, "dead_count", 3, 30)
        active = 'dispatchbox_alert_active{alert="dead_count",channel="slack"} 1.0'
        wait_until(lambda: active in srv.client.get("/metrics").text, 30, "the alert gauge")
        metrics = srv.client.get("/metrics").text
    finally:
        assert srv.stop() == 0
    texts = slack.texts()
    assert len(texts) == 2, texts
    assert any("3 events went dead" in t for t in texts)
    assert any("3 events are dead, more than the threshold of 2" in t for t in texts)
    assert 'dispatchbox_alert_active{alert="dead_count",channel="slack"} 1.0' in metrics
    assert SECRET_PATH not in srv.log()
