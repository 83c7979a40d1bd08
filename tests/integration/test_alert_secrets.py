"""A webhook URL's token stays out of the real worker's log however httpx normalises the URL
(lower-case host, default port dropped, percent-encoding), and the redaction of httpx's records
touches only the secret URL's own requests."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from dispatchbox.observability.webhook import WebhookConfig, WebhookSender
from dispatchbox.outbound import redact, url_secrets
from tests.integration.test_alert_channels import HOOK_SECRET, Endpoint
from tests.integration.test_alert_channels import hook as hook  # the fixture
from tests.integration.test_alerts import _worker
from tests.worker_helpers import publish, wait_until

TOKEN = "T0K3N%7e-in-the-path"
QUERY = "sig=QuErYsEcReT"
# As typed: upper-case host and the explicit default port, which httpx logs as
# http://localhost/hooks/... The local endpoint receives it as the HTTP proxy (HTTP_PROXY), so
# nothing has to listen on port 80.
TYPED = f"http://LOCALHOST:80/hooks/{TOKEN}?{QUERY}"


def test_a_normalised_webhook_url_keeps_its_token_out_of_the_worker_log(
    db_dsn: str, hook: Endpoint, tmp_path: Path
) -> None:
    env = {
        "HTTP_PROXY": hook.url(),
        "NO_PROXY": "",
        "DISPATCHBOX_ALERT_WEBHOOK_URL": TYPED,
        "DISPATCHBOX_ALERT_WEBHOOK_SECRET": HOOK_SECRET,
        "DISPATCHBOX_ALERT_INTERVAL_SECONDS": "0.3",
        "DISPATCHBOX_ALERT_DEAD_WINDOW_SECONDS": "600",
        "DISPATCHBOX_ALERT_DEAD_THRESHOLD": "1",
        "DISPATCHBOX_ALERT_PENDING_AGE_SECONDS": "-1",
    }
    records = tmp_path / "records"
    records.mkdir()
    run = _worker(db_dsn, records, tmp_path / "w.log", env, "--processes", "1")
    try:
        publish(db_dsn, "test.always_fail", 2, max_attempts=1)
        wait_until(
            lambda: "HTTP Request: POST http://localhost/***" in run.log(), 90, "httpx's line"
        )
    finally:
        code = run.stop()
    log = run.log()
    assert code == 0, log
    assert hook.requests, "the webhook was called"
    assert hook.requests[0].path.startswith("http://localhost/hooks/T0K3N")  # really normalised
    for secret in ("T0K3N", "QuErYsEcReT", HOOK_SECRET):
        assert secret not in log


def test_the_httpx_filter_is_installed_once_and_spares_other_urls(
    hook: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = hook.url(f"/hooks/{TOKEN}?{QUERY}")
    for _ in range(3):
        sender = WebhookSender(WebhookConfig(secret_url, HOOK_SECRET, 5))
    ours = [f for f in logging.getLogger("httpx").filters if type(f).__name__ == "_HttpxRedactor"]
    assert len(ours) == 1
    with caplog.at_level(logging.INFO, logger="httpx"), httpx.Client() as client:
        sender._client.post(secret_url, content=b"{}")
        client.post(hook.url("/a-handler-s-own-call"), content=b"{}")
        client.post(hook.url(), content=b"{}")  # a URL without a path is not hidden either
    lines = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert len(lines) == 3, lines
    assert "http://127.0.0.1/***" in lines[0] and "T0K3N" not in lines[0]
    assert hook.url("/a-handler-s-own-call") in lines[1]
    assert hook.url("/") in lines[2]


def test_error_text_is_redacted_in_the_normalised_form_too() -> None:
    normalised = str(httpx.URL(TYPED))
    assert normalised != TYPED
    for text in (f"failed for {normalised}", f"failed for {TYPED}", f"GET /hooks/{TOKEN}?{QUERY}"):
        out = redact(text, url_secrets(TYPED))
        assert "T0K3N" not in out and "QuErYsEcReT" not in out, out
