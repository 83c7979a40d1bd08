"""E-mail, PagerDuty and webhook alerts against real local servers and a real PostgreSQL.

E-mail goes to an aiosmtpd server that requires STARTTLS (a certificate from a throwaway CA made
with trustme) and a login; PagerDuty and the webhook are local HTTP servers that record what
arrives. The evaluators are the ones the workers run, on their own connections.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import hmac
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dispatchbox import OutboxRepository
from dispatchbox.errors import ConfigurationError
from dispatchbox.maintenance.alerts import AlertConfig, AlertEvaluator, AlertGroup
from dispatchbox.observability.alerting import channels_from_env, check_env
from dispatchbox.observability.mail import EmailConfig, EmailSender
from dispatchbox.observability.pagerduty import PagerDutyConfig, PagerDutySender
from dispatchbox.observability.webhook import WebhookConfig, WebhookSender, sign
from dispatchbox.tempcluster import free_port
from tests.conftest import run_cli
from tests.integration.test_alerts import make_dead
from tests.worker_helpers import wait_until

SMTP_PASSWORD = "SmTpPaSsWoRd-0f9e8d"
ROUTING_KEY = "R0UT1NGKEYsecret0123456789abcdef"
HOOK_SECRET = "wEbHoOkSeCrEt-5a4b3c2d1e"
HOOK_PATH = "/hooks/T0K3N-in-the-path"
SECRETS = (SMTP_PASSWORD, ROUTING_KEY, HOOK_SECRET, HOOK_PATH)
# How long a hung endpoint holds a request (and a client waits for it): longer than any test's
# total waiting, so that "still unanswered" holds for the whole test.
HANG_CAP = 900.0


# -- a real SMTP server ------------------------------------------------------------------------


@dataclass
class Mail:
    message: email.message.EmailMessage
    tls: bool
    login: bytes | None
    rcpt: list[str]


@dataclass
class Smtp:
    port: int
    ca_file: str
    mails: list[Mail] = field(default_factory=list)

    def config(self, **overrides: Any) -> EmailConfig:
        settings: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "to": ("oncall@example.com", "lead@example.com"),
            "sender": "alerts@example.com",
            "username": "alerts",
            "password": SMTP_PASSWORD,
            "ca_file": self.ca_file,
            "timeout": 5,
            **overrides,
        }
        return EmailConfig(**settings)


class _MailHandler:
    def __init__(self, smtp: Smtp) -> None:
        self.smtp = smtp

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        login = session.auth_data if session.authenticated else None
        self.smtp.mails.append(
            Mail(msg, session.ssl is not None, login, list(envelope.rcpt_tos))  # type: ignore[arg-type]
        )
        return "250 OK"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        b"alerts",
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, auth_data=data.login if ok else None)


@contextlib.contextmanager
def smtp_server(tmp_path: Path, *, starttls: bool) -> Iterator[Smtp]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(tls)
    smtp = Smtp(port=free_port(), ca_file=str(ca_file))
    params: dict[str, Any] = {"authenticator": _authenticator, "auth_require_tls": starttls}
    if starttls:
        params.update(tls_context=tls, require_starttls=True)
    controller = Controller(_MailHandler(smtp), hostname="127.0.0.1", port=smtp.port, **params)
    controller.start()
    try:
        yield smtp
    finally:
        controller.stop()


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[Smtp]:
    with smtp_server(tmp_path, starttls=True) as server:
        yield server


# -- local HTTP endpoints (PagerDuty, a webhook receiver) ----------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Endpoint:
    status: int
    server: ThreadingHTTPServer | None = None
    requests: list[Request] = field(default_factory=list)
    # While cleared, requests are held unanswered (a hung endpoint); `arrived` says one came.
    open: threading.Event = field(default_factory=threading.Event)
    # Requests answered so far (the response written).
    answered: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/") -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def bodies(self) -> list[Any]:
        with self.lock:
            return [r.json for r in self.requests]


def _endpoint(status: int) -> Iterator[Endpoint]:
    ep = Endpoint(status)
    ep.open.set()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with ep.lock:
                ep.requests.append(Request(self.path, dict(self.headers), raw))
            ep.arrived.set()
            ep.open.wait(HANG_CAP)
            try:
                self.send_response(ep.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            with ep.lock:
                ep.answered += 1

    ep.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ep.server.daemon_threads = True
    threading.Thread(target=ep.server.serve_forever, daemon=True).start()
    try:
        yield ep
    finally:
        ep.open.set()
        ep.server.shutdown()
        ep.server.server_close()


@pytest.fixture
def pagerduty() -> Iterator[Endpoint]:
    yield from _endpoint(202)


@pytest.fixture
def hook() -> Iterator[Endpoint]:
    yield from _endpoint(200)


def pd_sender(ep: Endpoint, timeout: float = 5) -> PagerDutySender:
    return PagerDutySender(PagerDutyConfig(ROUTING_KEY, ep.url("/v2/enqueue"), timeout))


def hook_sender(ep: Endpoint, timeout: float = 5) -> WebhookSender:
    return WebhookSender(WebhookConfig(ep.url(HOOK_PATH), HOOK_SECRET, timeout))


CONFIG = {
    "interval": 0.05,
    "dead_window": 60.0,
    "dead_threshold": -1,
    "dead_age": -1,
    "pending_age": -1,
    "settle": 0.0,
    "cooldown": 0.0,
    "label": "prod-eu",
}


def evaluator(dsn: str, channel: Any, **config: Any) -> AlertEvaluator:
    return AlertEvaluator(dsn, channel, AlertConfig(**{**CONFIG, **config}), name="test:1")


def rounds_until(evs: list[AlertEvaluator], predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in evs:
            ev.run_once()
        if predicate():
            return
        time.sleep(0.08)
    raise AssertionError("timed out waiting for the alert condition")


def evaluated_rounds(
    dsn: str, run: Callable[[], object], alert: str, channels: list[str], n: int
) -> None:
    """n rounds of run() that each evaluate ``alert`` on every channel: the database records an
    evaluation in the channel's evaluated_at, and a round within the interval skips, so this
    waits for that record instead of sleeping out the interval."""

    def evaluated_at() -> dict[str, Any]:
        return {c: (state(dsn, alert, c) or {}).get("evaluated_at") for c in channels}

    for _ in range(n):
        before = evaluated_at()

        def evaluated(before: dict[str, Any] = before) -> bool:
            run()
            now = evaluated_at()
            return all(now[c] is not None and now[c] != before[c] for c in channels)

        wait_until(evaluated, 10, f"a round that evaluates {alert}", step=0.02)


def redrive_all(dsn: str) -> None:
    OutboxRepository(dsn=dsn).retry_dead_events(actor="test")


def state(dsn: str, alert: str, channel: str) -> dict[str, Any] | None:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT * FROM outbox_alert_state WHERE alert = %s AND channel = %s", [alert, channel]
        )
        row = cur.fetchone()
        names = [c.name for c in cur.description or []]
    return dict(zip(names, row, strict=True)) if row else None


# -- e-mail ---------------------------------------------------------------------------------------


def test_email_over_starttls_with_login_one_trigger_and_one_resolve(
    db_dsn: str, smtp: Smtp
) -> None:
    make_dead(db_dsn, "order.paid", "RuntimeError: gateway down", 3)
    # Two evaluators on their own connections, as if on two hosts.
    evs = [
        AlertEvaluator(
            db_dsn,
            EmailSender(smtp.config()),
            AlertConfig(**{**CONFIG, "dead_threshold": 2, "dead_window": -1}),
            name=f"host{i}:1",
        )
        for i in range(2)
    ]
    rounds_until(evs, lambda: len(smtp.mails) >= 1)
    # Five more evaluated rounds on both: the incident is announced, nothing more is sent.
    evaluated_rounds(db_dsn, lambda: [ev.run_once() for ev in evs], "dead_count", ["email"], 5)
    assert len(smtp.mails) == 1
    trigger = smtp.mails[0]
    assert trigger.tls, "the message went before STARTTLS"
    assert trigger.login == b"alerts"
    assert sorted(trigger.rcpt) == ["lead@example.com", "oncall@example.com"]
    msg = trigger.message
    assert msg["Subject"].startswith("prod-eu: 3 events are dead, more than the threshold of 2")
    assert msg["From"] == "alerts@example.com"
    body = msg.get_content()
    assert "dispatchbox dead-events stats --by error" in body and "*" not in body
    assert msg["X-Dispatchbox-Action"] == "trigger"

    redrive_all(db_dsn)
    rounds_until(evs, lambda: len(smtp.mails) >= 2)
    resolve = smtp.mails[1].message
    assert resolve["Subject"].startswith("prod-eu: resolved after")
    assert resolve["X-Dispatchbox-Action"] == "resolve"
    assert resolve["X-Dispatchbox-Incident"] == msg["X-Dispatchbox-Incident"]
    row = state(db_dsn, "dead_count", "email")
    assert row is not None and row["messages_sent"] == 2 and not row["active"]
    for ev in evs:
        ev.stop()


def test_email_refuses_a_server_without_starttls_and_never_sends_the_password(
    db_dsn: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_dead(db_dsn, "order.paid", "RuntimeError: x", 1)

    def failures() -> int:
        return int((state(db_dsn, "dead_events", "email") or {}).get("send_failures", 0))

    with smtp_server(tmp_path, starttls=False) as plain:
        ev = evaluator(db_dsn, EmailSender(plain.config()))
        try:
            with caplog.at_level(logging.DEBUG):
                rounds_until([ev], lambda: failures() >= 2)
        finally:
            ev.stop()
    assert plain.mails == []
    assert "email_delivery_failed" in caplog.text and "STARTTLS" in caplog.text
    assert caplog.text.count("email_delivery_failed ") == 1  # then DEBUG only
    for secret in SECRETS:
        assert secret not in caplog.text


def test_email_with_a_wrong_certificate_authority_fails_closed(
    db_dsn: str, smtp: Smtp, tmp_path: Path
) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    sender = EmailSender(smtp.config(ca_file=str(other)))
    make_dead(db_dsn, "order.paid", "RuntimeError: x", 1)
    ev = evaluator(db_dsn, sender)
    ev.run_once()
    ev.stop()
    assert smtp.mails == []
    row = state(db_dsn, "dead_events", "email")
    assert row is not None and row["send_failures"] == 1 and row["messages_sent"] == 0


# -- PagerDuty -----------------------------------------------------------------------------------


def test_pagerduty_trigger_and_resolve_share_a_dedup_key_per_incident(
    db_dsn: str, pagerduty: Endpoint
) -> None:
    # Died two minutes ago, threshold one minute: "dead events left unattended".
    make_dead(db_dsn, "order.paid", "RuntimeError: old", 2, dead_seconds_ago=120)
    ev = evaluator(db_dsn, pd_sender(pagerduty), dead_age=60.0)
    rounds_until([ev], lambda: len(pagerduty.requests) >= 1)
    redrive_all(db_dsn)
    rounds_until([ev], lambda: len(pagerduty.requests) >= 2)
    # A second incident gets a new key.
    make_dead(db_dsn, "order.paid", "RuntimeError: old again", 1, dead_seconds_ago=120)
    rounds_until([ev], lambda: len(pagerduty.requests) >= 3)
    ev.stop()
    first, resolve, second = pagerduty.bodies()
    assert all(r.path == "/v2/enqueue" for r in pagerduty.requests)
    assert first["routing_key"] == ROUTING_KEY
    assert first["event_action"] == "trigger"
    assert first["payload"]["severity"] == "warning"
    assert first["payload"]["summary"].startswith("prod-eu: the oldest dead event died 2m")
    assert first["payload"]["class"] == "dead_age"
    assert resolve == {
        "routing_key": ROUTING_KEY,
        "event_action": "resolve",
        "dedup_key": first["dedup_key"],
    }
    assert second["event_action"] == "trigger"
    assert second["dedup_key"] != first["dedup_key"]
    # Pagers take incidents only: the deaths notification has no PagerDuty row at all.
    assert state(db_dsn, "dead_events", "pagerduty") is None


# -- webhook -------------------------------------------------------------------------------------


def test_webhook_body_is_signed_with_hmac_sha256(
    db_dsn: str, hook: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    make_dead(db_dsn, "order.paid", "RuntimeError: card 4242 declined", 2)
    ev = evaluator(db_dsn, hook_sender(hook))
    with caplog.at_level(logging.DEBUG):
        rounds_until([ev], lambda: len(hook.requests) >= 1)
    ev.stop()
    # httpx logs every request with its URL; the webhook URL (it may hold a token) never shows.
    assert "alert_sent alert=dead_events channel=webhook" in caplog.text
    assert HOOK_PATH not in caplog.text and HOOK_SECRET not in caplog.text
    [req] = hook.requests
    stamp = req.headers["X-Dispatchbox-Timestamp"]
    assert abs(int(stamp) - time.time()) < 600
    expected = sign(HOOK_SECRET, stamp, req.raw)
    assert hmac.compare_digest(req.headers["X-Dispatchbox-Signature"], expected)
    assert req.headers["X-Dispatchbox-Signature"] != sign("another secret!!", stamp, req.raw)
    body = req.json
    assert body["alert"] == "dead_events" and body["action"] == "notify"
    assert body["value"] == 2
    assert "2 events went dead" in body["text"] and "4242" not in body["text"]  # masked
    assert HOOK_SECRET not in req.raw.decode()


# -- one failing channel slows nothing else ------------------------------------------------------


def test_a_hung_channel_delays_no_other_channel(
    db_dsn: str, pagerduty: Endpoint, hook: Endpoint, smtp: Smtp
) -> None:
    pagerduty.open.clear()  # PagerDuty accepts the connection and never answers
    make_dead(db_dsn, "order.paid", "RuntimeError: x", 3)
    group = AlertGroup.for_channels(
        db_dsn,
        [pd_sender(pagerduty, timeout=HANG_CAP), hook_sender(hook), EmailSender(smtp.config())],
        AlertConfig(**{**CONFIG, "dead_threshold": 2}),
    )
    group.start()
    try:
        assert pagerduty.arrived.wait(15), "PagerDuty was never called"
        # While PagerDuty's request hangs, the webhook and the e-mail arrive.
        wait_until(lambda: len(hook.requests) >= 2 and len(smtp.mails) >= 2, 15, "the others")
        with pagerduty.lock:  # the moment the others had arrived
            assert (len(pagerduty.requests), pagerduty.answered) == (1, 0)
    finally:
        pagerduty.open.set()
        group.stop()
    kinds = sorted(r.json["alert"] for r in hook.requests)
    assert kinds == ["dead_count", "dead_events"]


# -- secrets and settings ------------------------------------------------------------------------


def test_failing_channels_keep_their_secrets_out_of_logs(
    db_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    channels = [
        PagerDutySender(PagerDutyConfig(ROUTING_KEY, closed + "/v2/enqueue", 2)),
        WebhookSender(WebhookConfig(closed + HOOK_PATH, HOOK_SECRET, 2)),
        EmailSender(
            EmailConfig(
                host="127.0.0.1",
                port=free_port(),
                to=("a@example.com",),
                username="alerts",
                password=SMTP_PASSWORD,
                timeout=2,
            )
        ),
    ]
    make_dead(db_dsn, "order.paid", "RuntimeError: x", 2)
    group = AlertGroup.for_channels(
        db_dsn, channels, AlertConfig(**{**CONFIG, "dead_threshold": 1})
    )
    with caplog.at_level(logging.DEBUG):
        evaluated_rounds(db_dsn, group.run_once, "dead_count", ["pagerduty", "webhook", "email"], 2)
    group.stop()
    for name in ("pagerduty", "webhook", "email"):
        assert f"{name}_delivery_failed" in caplog.text
    for secret in SECRETS:
        assert secret not in caplog.text
        for channel in channels:
            assert secret not in repr(channel.config)


def test_channels_from_the_environment_and_bad_settings() -> None:
    env = {
        "DISPATCHBOX_SMTP_HOST": "smtp.example.com",
        "DISPATCHBOX_ALERT_EMAIL_TO": "a@example.com, b@example.com",
        "DISPATCHBOX_SMTP_USERNAME": "alerts",
        "DISPATCHBOX_SMTP_PASSWORD": SMTP_PASSWORD,
        "DISPATCHBOX_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "DISPATCHBOX_ALERT_WEBHOOK_URL": "https://hooks.example.com" + HOOK_PATH,
        "DISPATCHBOX_ALERT_WEBHOOK_SECRET": HOOK_SECRET,
    }
    names = [c.name for c in channels_from_env(env)]
    assert names == ["email", "pagerduty", "webhook"]
    line = check_env(env)
    assert line is not None
    assert "e-mail to a@example.com, b@example.com via smtp.example.com:587" in line
    assert "PagerDuty at events.pagerduty.com" in line
    assert "webhook at hooks.example.com" in line
    for secret in SECRETS:
        assert secret not in line
    bad = [
        ({"DISPATCHBOX_SMTP_HOST": "smtp.example.com"}, "DISPATCHBOX_ALERT_EMAIL_TO"),
        ({**env, "DISPATCHBOX_SMTP_TLS": "maybe"}, "DISPATCHBOX_SMTP_TLS must be one of"),
        ({**env, "DISPATCHBOX_SMTP_TLS": "none"}, "only for a relay on this host"),
        ({"DISPATCHBOX_ALERT_WEBHOOK_URL": "https://x.example"}, "WEBHOOK_SECRET"),
        (
            {"DISPATCHBOX_ALERT_WEBHOOK_URL": "https://x", "DISPATCHBOX_ALERT_WEBHOOK_SECRET": "s"},
            "at least 16 characters",
        ),
        ({"DISPATCHBOX_PAGERDUTY_ROUTING_KEY": "abc"}, "too short"),
        ({**env, "DISPATCHBOX_PAGERDUTY_TIMEOUT": "soon"}, "number of seconds"),
        ({"DISPATCHBOX_ALERT_DEAD_AGE_SECONDS": "-5"}, "DEAD_AGE_SECONDS must be -1"),
    ]
    for settings, message in bad:
        with pytest.raises(ConfigurationError, match=message):
            channels_from_env(settings)
            AlertConfig.from_env(settings)


def test_worker_refuses_a_bad_channel_setting_in_one_line(db_dsn: str) -> None:
    result = run_cli(
        "worker",
        "--app",
        "tests.worker_app:dispatcher",
        "--processes",
        "1",
        dsn=db_dsn,
        env={
            "DISPATCHBOX_SMTP_HOST": "smtp.example.com",
            "DISPATCHBOX_ALERT_EMAIL_TO": "oncall@example.com",
            "DISPATCHBOX_SMTP_PASSWORD": SMTP_PASSWORD,
        },
    )
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [
        "dispatchbox: error: DISPATCHBOX_SMTP_USERNAME and DISPATCHBOX_SMTP_PASSWORD go together"
    ]
    assert SMTP_PASSWORD not in result.stderr + result.stdout


@pytest.mark.slow
def test_two_worker_hosts_send_one_message_per_channel_while_pagerduty_hangs(
    db_dsn: str, smtp: Smtp, hook: Endpoint, pagerduty: Endpoint, tmp_path: Path
) -> None:
    """Two supervisors (as if on two hosts), two processes each, channels from the environment:
    one e-mail and one webhook call per message, however many processes evaluate, and events
    keep flowing while PagerDuty accepts connections and never answers."""
    from tests.integration.test_alerts import _log_has, _worker
    from tests.worker_helpers import counts, publish

    pagerduty.open.clear()
    env = {
        "DISPATCHBOX_SMTP_HOST": "127.0.0.1",
        "DISPATCHBOX_SMTP_PORT": str(smtp.port),
        "DISPATCHBOX_SMTP_CA_FILE": smtp.ca_file,
        "DISPATCHBOX_SMTP_USERNAME": "alerts",
        "DISPATCHBOX_SMTP_PASSWORD": SMTP_PASSWORD,
        "DISPATCHBOX_ALERT_EMAIL_TO": "oncall@example.com",
        "DISPATCHBOX_ALERT_EMAIL_FROM": "alerts@example.com",
        "DISPATCHBOX_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "DISPATCHBOX_PAGERDUTY_URL": pagerduty.url("/v2/enqueue"),
        "DISPATCHBOX_PAGERDUTY_TIMEOUT": str(HANG_CAP),
        "DISPATCHBOX_ALERT_WEBHOOK_URL": hook.url(HOOK_PATH),
        "DISPATCHBOX_ALERT_WEBHOOK_SECRET": HOOK_SECRET,
        "DISPATCHBOX_ALERT_INTERVAL_SECONDS": "0.3",
        "DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS": "600",
        "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "5",
        "DISPATCHBOX_ALERT_PENDING_AGE_SECONDS": "-1",
    }
    records = tmp_path / "records"
    records.mkdir()
    fast = ["--processes", "2", "--backoff-base", "0.05", "--backoff-max", "0.1"]
    runs = [_worker(db_dsn, records, tmp_path / f"w{i}.log", env, *fast) for i in range(2)]
    try:
        # 2 hosts x 2 processes x 3 channels
        wait_until(lambda: _log_has(runs, "alerts_started", 12), 60, "12 evaluators started")
        publish(db_dsn, "test.always_fail", 20, max_attempts=1)
        assert pagerduty.arrived.wait(60), "PagerDuty was never called"
        publish(db_dsn, "test.ok", 500)
        wait_until(lambda: counts(db_dsn) == {"dead": 20, "done": 500}, 60, "events finished")
        wait_until(
            lambda: len(smtp.mails) >= 2 and len(hook.requests) >= 2, 30, "e-mail and webhook"
        )
        with pagerduty.lock:  # dispatch finished and the others arrived while PagerDuty hung
            assert (len(pagerduty.requests), pagerduty.answered) == (1, 0)
        # The incident stays open: two more evaluation rounds of the e-mail and webhook rows,
        # by whichever process, send nothing new.
        for _ in range(2):
            mark = _db_now(db_dsn)
            wait_until(
                lambda mark=mark: _evaluated_after(db_dsn, mark), 30, "another evaluation round"
            )
    finally:
        pagerduty.open.set()
        for run in runs:
            assert run.stop() == 0, run.log()
    subjects = sorted(m.message["Subject"].split(":")[1].strip() for m in smtp.mails)
    assert len(smtp.mails) == 2, subjects
    assert sorted(r.json["alert"] for r in hook.requests) == ["dead_count", "dead_events"]
    assert len(pagerduty.requests) == 1  # hung: no second host sent it again meanwhile
    for run in runs:
        log = run.log()
        assert "alerts to Slack" not in log
        for secret in SECRETS:
            assert secret not in log


def _db_now(dsn: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    return row[0]


def _evaluated_after(dsn: str, mark: Any) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE evaluated_at > %s), count(*) FROM outbox_alert_state "
            "WHERE channel IN ('email', 'webhook')",
            [mark],
        ).fetchone()
    assert row is not None
    return bool(row[1]) and row[0] == row[1]
