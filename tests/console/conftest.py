"""Fixtures of the console tests: a real `dispatchbox serve`, a real worker, headless Chromium.

Chromium is Debian's (/usr/bin/chromium, installed by `make system`), driven by Playwright's
Python package; Playwright never downloads a browser here. Screenshots go to
test-artifacts/console/ (gitignored), or $DISPATCHBOX_TEST_ARTIFACTS/console.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.tempcluster import free_port

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
OPS_SECRET = secrets.token_hex(16)
READER_SECRET = secrets.token_hex(16)
TOKENS = f"alice:{OPS_SECRET},auditor:{READER_SECRET}"
FAST = ["--backoff-base", "0.05", "--backoff-max", "0.2", "--poll-interval", "0.2"]


def artifacts() -> Path:
    base = Path(os.environ.get("DISPATCHBOX_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    out = base / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


def wait_until(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Process:
    """A dispatchbox subprocess whose output goes to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatchbox", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


def _env(dsn: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHBOX_")}
    env["DISPATCHBOX_DSN"] = dsn
    env.update(extra)
    return env


def start_serve(dsn: str, log: Path, *args: str, **env: str) -> tuple[str, Process]:
    """`dispatchbox serve` on a free port, once /healthz answers."""
    port = free_port()
    srv = Process(["serve", "--port", str(port), *args], _env(dsn, **env), log)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if srv.proc.poll() is not None:
            raise AssertionError("serve exited: " + srv.log())
        try:
            return httpx.get(base + "/healthz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(up, "dispatchbox serve")
    return base, srv


@pytest.fixture
def console_server(db_dsn: str, tmp_path: Path) -> Iterator[tuple[str, Process]]:
    base, srv = start_serve(
        db_dsn,
        tmp_path / "serve.log",
        DISPATCHBOX_API_TOKEN=TOKENS,
        DISPATCHBOX_API_READERS="auditor",
    )
    try:
        yield base, srv
    finally:
        assert srv.stop() == 0, srv.log()
        # The secrets never reach the server's log.
        assert OPS_SECRET not in srv.log() and READER_SECRET not in srv.log()


@pytest.fixture
def worker(db_dsn: str, record_dir: Path, tmp_path: Path) -> Iterator[Process]:
    env = _env(db_dsn, DBX_RECORD_DIR=str(record_dir))
    run = Process(
        ["worker", "--app", "tests.console.console_app:dispatcher", *FAST],
        env,
        tmp_path / "worker.log",
    )
    try:
        yield run
    finally:
        run.stop()


def statuses(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id, status FROM outbox_event").fetchall())


def seed_through_worker(dsn: str) -> dict[str, list[int]]:
    """Events that die for real in the running worker: 3 orders without a customer, 6 flaky
    calls; plus 40 older dead events of two other types spread over the last 20 hours."""
    with psycopg.connect(dsn) as conn:
        orders = publish_many(
            conn,
            [
                {
                    "aggregate_type": "order",
                    "aggregate_id": f"A-{i}",
                    "event_type": "console.order",
                    "payload": {"order_id": i, "total": "19.90", "currency": "EUR"},
                    "max_attempts": 2,
                    "headers": {"trace_id": f"trace-{i}"},
                }
                for i in range(3)
            ],
        )
        flaky = publish_many(
            conn,
            [
                {
                    "aggregate_type": "payment",
                    "aggregate_id": f"P-{i}",
                    "event_type": "console.flaky",
                    "payload": {"payment_id": i},
                    "max_attempts": 2,
                }
                for i in range(6)
            ],
        )
        older = publish_many(
            conn,
            [
                {
                    "aggregate_type": "invoice",
                    "aggregate_id": f"I-{i}",
                    "event_type": "invoice.issued" if i % 3 else "mail.sent",
                    "payload": {"n": i},
                }
                for i in range(40)
            ],
        )
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
            "last_error = CASE WHEN event_type = 'mail.sent' "
            "  THEN 'SMTPError: 552 mailbox of user ' || aggregate_id || ' full' "
            "  ELSE 'HTTPError: 503 Service Unavailable for url: https://erp.example.com/i/' "
            "       || aggregate_id END, "
            "dead_at = now() - make_interval(mins => ((id %% 20) * 60 + 5)::int) "
            "WHERE id = ANY(%s)",
            [older],
        )
    ids = orders + flaky
    wait_until(lambda: all(statuses(dsn).get(i) == "dead" for i in ids), "the seeded deaths")
    return {"orders": orders, "flaky": flaky, "older": older}


# Module scope, not session: while Playwright's sync API runs, the main thread has a running
# event loop, and later tests calling asyncio.run() would fail.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: run `make system` (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # --no-sandbox: the suite runs as root in CI containers, where Chromium's sandbox cannot.
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def login(browser: Any, base: str, secret: str, *, locale: str = "en-GB") -> Any:
    context = browser.new_context(
        base_url=base,
        locale=locale,
        viewport={"width": 1360, "height": 900},
        extra_http_headers={"Accept-Language": locale},
    )
    page = context.new_page()
    page.goto("/ui/")
    assert "/ui/login" in page.url
    page.fill("#token", secret)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/ui/")
    return page
