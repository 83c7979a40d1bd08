"""`dispatchbox serve` as users run it: a real uvicorn server on a free port, real HTTP."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from dispatchbox import publish_many
from dispatchbox.tempcluster import free_port
from tests import secret_scan
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
SECRET = secrets.token_hex(16)
CI_SECRET = secrets.token_hex(16)
TOKEN_ENV = f"ops:{SECRET},ci:{CI_SECRET}"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def _capture_response(response: httpx.Response) -> None:
    """Every response body goes to the suite's secrets scan (tests/secret_scan.py)."""
    response.read()
    secret_scan.capture(f"API {response.request.method} {response.request.url.path}", response.text)


class Server:
    """One `dispatchbox serve` subprocess; its combined output goes to a log file."""

    def __init__(
        self,
        dsn: str,
        log: Path,
        *args: str,
        token: str | None = TOKEN_ENV,
        keep_env: bool = False,
    ) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if keep_env or not k.startswith("DISPATCHBOX_")}
        env.pop("DISPATCHBOX_API_TOKEN", None)
        env["DISPATCHBOX_DSN"] = dsn
        if token is not None:
            env["DISPATCHBOX_API_TOKEN"] = token
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispatchbox", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(
            base_url=self.base, timeout=30, event_hooks={"response": [_capture_response]}
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError("serve exited: " + self.log())
            try:
                if self.client.get("/healthz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("serve did not come up: " + self.log())
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()


@pytest.fixture
def server(db_dsn: str, tmp_path: Path) -> Iterator[Server]:
    srv = Server(db_dsn, tmp_path / "serve.log")
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def seed(dsn: str) -> dict[str, list[int]]:
    """Dead events of two kinds (one recent, one two days old), one pending, one done."""
    spec = [("pay.failed", "order")] * 5 + [("mail.bounced", "user")] * 3 + [("ok.type", "x")] * 2
    with psycopg.connect(dsn) as conn:
        ids = publish_many(
            conn,
            [
                {"aggregate_type": a, "aggregate_id": str(i), "event_type": t, "payload": {"n": i}}
                for i, (t, a) in enumerate(spec)
            ],
        )
        pay, mail, pending, done = ids[:5], ids[5:8], ids[8], ids[9]
        for i, event_id in enumerate(pay):
            conn.execute(
                "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
                "last_error = %s, dead_at = now() - interval '1 hour' WHERE id = %s",
                [f"TimeoutError: Gateway timed out after {i + 1} s", event_id],
            )
            conn.execute(
                "INSERT INTO outbox_event_error (event_id, attempt, worker, error_type, message) "
                "VALUES (%s, 1, 'host:1', 'TimeoutError', 'Gateway timed out')",
                [event_id],
            )
        conn.execute(
            "UPDATE outbox_event SET status = 'dead', attempts = max_attempts, "
            "last_error = 'SMTPError: mailbox full', dead_at = now() - interval '2 days' "
            "WHERE id = ANY(%s)",
            [mail],
        )
        conn.execute(
            "UPDATE outbox_event SET status = 'done', done_at = now() WHERE id = %s", [done]
        )
        conn.execute("INSERT INTO outbox_breaker (destination) VALUES ('ledger')")
    return {"pay": pay, "mail": mail, "pending": [pending], "done": [done]}


def statuses(dsn: str, ids: list[int]) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, status FROM outbox_event WHERE id = ANY(%s)", [ids]
        ).fetchall()
    return dict(rows)


def audit(dsn: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT actor, action, affected FROM outbox_dead_letter_audit ORDER BY id"
        ).fetchall()
    return [(a, b, c) for a, b, c in rows]


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.text)
    return response.json()


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["message"]
    assert isinstance(message, str) and message
    return message


# -- authentication ---------------------------------------------------------------------------

API_ROUTES = [
    ("GET", "/api/dead-events", None),
    ("GET", "/api/dead-events/stats", None),
    ("GET", "/api/dead-events/{id}", None),
    ("POST", "/api/dead-events/{id}/retry", None),
    ("POST", "/api/dead-events/retry-batch", {"ids": ["{other}"]}),
    ("GET", "/api/breakers", None),
    ("POST", "/api/breakers/ledger/reset", None),
]


def test_every_api_route_needs_the_token_and_the_probes_do_not(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    dead, other = ids["pay"][0], ids["pay"][1]

    def call(method: str, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
        if body is not None:
            body = json.loads(json.dumps(body).replace('"{other}"', str(other)))
        return server.client.request(
            method, path.replace("{id}", str(dead)), json=body, headers=headers
        )

    for method, path, body in API_ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-" + SECRET},
            {"Authorization": f"Bearer {SECRET[:-1]}"},
            {"Authorization": f"Basic {SECRET}"},
            {"Authorization": SECRET},
            {"X-Api-Token": SECRET},
        ):
            response = call(method, path, body, headers)
            assert error(response, 401).startswith("missing or invalid bearer token"), path
            assert response.headers["www-authenticate"] == "Bearer"
            assert SECRET not in response.text
        assert call(method, path, body, AUTH).status_code == 200, path
    # The second token, and a token sent whole as name:secret, work too.
    assert server.client.get("/api/dead-events", headers={
        "Authorization": f"Bearer {CI_SECRET}"}).status_code == 200  # fmt: skip
    assert server.client.get("/api/dead-events", headers={
        "Authorization": f"Bearer ops:{SECRET}"}).status_code == 200  # fmt: skip
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert server.client.get(path).status_code == 200, path
    assert SECRET not in server.log() and CI_SECRET not in server.log()


# -- reads ------------------------------------------------------------------------------------


def test_list_filters_and_pages_like_the_cli(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    dead = sorted(ids["pay"] + ids["mail"])

    def page(**params: Any) -> Any:
        return ok(server.client.get("/api/dead-events", params=params, headers=AUTH))

    everything = page()
    assert [e["id"] for e in everything["items"]] == dead
    assert everything["total"] == 8 and everything["next_after_id"] is None
    first = page(limit=3)
    assert [e["id"] for e in first["items"]] == dead[:3] and first["total"] == 8
    assert first["next_after_id"] == dead[2]
    second = page(limit=3, after_id=first["next_after_id"])
    assert [e["id"] for e in second["items"]] == dead[3:6]
    assert [e["id"] for e in page(limit=3, offset=6)["items"]] == dead[6:]

    assert [e["id"] for e in page(event_type="mail.bounced")["items"]] == ids["mail"]
    assert page(aggregate_type="order")["total"] == 5
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    assert [e["id"] for e in page(since=since)["items"]] == ids["pay"]
    assert [e["id"] for e in page(until=since)["items"]] == ids["mail"]
    assert page(error_contains="MAILBOX")["total"] == 3
    item = page(event_type="pay.failed", limit=1)["items"][0]
    assert item["payload"] == {"n": 0} and item["status"] == "dead"
    assert item["last_error"] == "TimeoutError: Gateway timed out after 1 s"
    fingerprint = item["error_fingerprint"]
    assert page(error_fingerprint=fingerprint)["total"] == 5
    assert page(event_type="pay.failed", error_contains="nope")["items"] == []

    # The CLI's `dead-events list` with the same filters gives the same events.
    for flags, params in (
        (["--event-type", "pay.failed", "--limit", "2", "--offset", "1"],
         {"event_type": "pay.failed", "limit": 2, "offset": 1}),
        (["--error-fingerprint", fingerprint, "--since", since],
         {"error_fingerprint": fingerprint, "since": since}),
    ):  # fmt: skip
        cli = run_cli("dead-events", "list", "--format", "json", *flags, dsn=db_dsn)
        assert cli.code == 0, cli.stderr
        assert [e["id"] for e in json.loads(cli.stdout)] == [
            e["id"] for e in page(**params)["items"]
        ]


def test_stats_and_one_event_with_its_history(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    stats = ok(server.client.get("/api/dead-events/stats", headers=AUTH))
    assert stats["total"] == 8
    assert [(g["key"], g["count"]) for g in stats["by_event_type"]] == [
        ("pay.failed", 5),
        ("mail.bounced", 3),
    ]
    assert [(g["key"], g["count"]) for g in stats["by_aggregate_type"]] == [
        ("order", 5),
        ("user", 3),
    ]
    assert [(g["signature"], g["count"]) for g in stats["by_error"]] == [
        ("TimeoutError: Gateway timed out after <n> s", 5),
        ("SMTPError: mailbox full", 3),
    ]
    only = ok(
        server.client.get(
            "/api/dead-events/stats", params={"by": "error", "event_type": "mail.bounced"},
            headers=AUTH,
        )
    )  # fmt: skip
    assert only["total"] == 3 and only["by_event_type"] is None
    assert [g["count"] for g in only["by_error"]] == [3]

    event = ok(server.client.get(f"/api/dead-events/{ids['pay'][0]}", headers=AUTH))
    assert event["status"] == "dead" and event["payload"] == {"n": 0}
    assert [(e["attempt"], e["error_type"]) for e in event["errors"]] == [(1, "TimeoutError")]
    pending = ok(server.client.get(f"/api/dead-events/{ids['pending'][0]}", headers=AUTH))
    assert pending["status"] == "pending" and pending["errors"] == []
    assert "no event with id 999999" in error(
        server.client.get("/api/dead-events/999999", headers=AUTH), 404
    )
    error(server.client.get("/api/dead-events/99999999999999999999999", headers=AUTH), 404)
    error(server.client.get("/api/dead-events/0", headers=AUTH), 400)
    error(server.client.get("/api/dead-events/abc", headers=AUTH), 404)


# -- retries ----------------------------------------------------------------------------------


def test_retry_one_event_records_the_token_name(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    target = ids["pay"][0]
    body = ok(server.client.post(f"/api/dead-events/{target}/retry", headers=AUTH))
    assert body == {"id": target, "status": "pending"}
    assert statuses(db_dsn, [target]) == {target: "pending"}
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT redrive_count, last_redriven_by FROM outbox_event WHERE id = %s", [target]
        ).fetchone()
    assert row == (1, "ops")
    assert audit(db_dsn) == [("ops", "retry", 1)]
    assert "not dead" in error(
        server.client.post(f"/api/dead-events/{target}/retry", headers=AUTH), 409
    )
    error(server.client.post(f"/api/dead-events/{ids['done'][0]}/retry", headers=AUTH), 409)
    error(server.client.post("/api/dead-events/424242/retry", headers=AUTH), 404)
    assert audit(db_dsn) == [("ops", "retry", 1)], "failed retries are not audited"


def test_breakers_over_http_are_audited_with_the_token_name(server: Server, db_dsn: str) -> None:
    seed(db_dsn)
    (ledger,) = ok(server.client.get("/api/breakers", headers=AUTH))
    assert (ledger["destination"], ledger["state"]) == ("ledger", "closed")
    opened = ok(server.client.post("/api/breakers/ledger/open", headers=AUTH))
    assert opened == {"destination": "ledger", "action": "open", "state": "open"}
    assert "already open" in error(
        server.client.post("/api/breakers/ledger/open", headers=AUTH), 409
    )
    assert ok(server.client.post("/api/breakers/ledger/close", headers=AUTH))["state"] == "closed"
    assert "already closed" in error(
        server.client.post("/api/breakers/ledger/close", headers=AUTH), 409
    )
    assert "no breaker" in error(server.client.post("/api/breakers/nope/open", headers=AUTH), 404)
    error(server.client.post("/api/breakers/ledger/explode", headers=AUTH), 400)
    assert audit(db_dsn) == [("ops", "breaker_open", 1), ("ops", "breaker_close", 1)]


def test_retry_batch_by_ids_is_all_or_nothing(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    pay, pending = ids["pay"], ids["pending"][0]
    ci = {"Authorization": f"Bearer {CI_SECRET}"}

    def batch(body: Any, headers: dict[str, str] = ci) -> httpx.Response:
        return server.client.post("/api/dead-events/retry-batch", json=body, headers=headers)

    response = batch({"ids": [pay[0], pending]})
    assert "not dead" in error(response, 409)
    assert response.json()["not_dead"] == [pending] and response.json()["missing"] == []
    response = batch({"ids": [pay[0], 777777]})
    error(response, 404)
    assert response.json()["missing"] == [777777]
    assert set(statuses(db_dsn, pay).values()) == {"dead"}, "a rejected batch retried something"

    dry = ok(batch({"ids": [pay[0], 777777], "dry_run": True, "skip_invalid": True}))
    assert dry == {"retried": 0, "dry_run": True, "would_retry": 1, "missing": [777777],
                   "not_dead": [], "conflicts": None}  # fmt: skip
    skipped = ok(batch({"ids": [pay[0], pay[1], pending], "skip_invalid": True}))
    assert skipped["retried"] == 2 and skipped["not_dead"] == [pending]
    done = ok(batch({"ids": pay[2:]}))
    assert done == {"retried": 3, "dry_run": False, "would_retry": None, "missing": [],
                    "not_dead": [], "conflicts": None}  # fmt: skip
    assert set(statuses(db_dsn, pay).values()) == {"pending"}
    assert [(a, b) for a, b, _ in audit(db_dsn)] == [("ci", "retry_batch")] * 2


def test_retry_batch_by_filter(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)

    def batch(body: Any) -> httpx.Response:
        return server.client.post("/api/dead-events/retry-batch", json=body, headers=AUTH)

    dry = ok(batch({"filter": {"event_type": "mail.bounced"}, "dry_run": True}))
    assert dry["would_retry"] == 3 and dry["retried"] == 0
    assert ok(batch({"filter": {"event_type": "pay.failed"}, "limit": 2}))["retried"] == 2
    assert ok(batch({"filter": {"error_contains": "mailbox"}}))["retried"] == 3
    assert set(statuses(db_dsn, ids["mail"]).values()) == {"pending"}
    assert sorted(statuses(db_dsn, ids["pay"]).values()) == ["dead"] * 3 + ["pending"] * 2
    assert [(a, b, n) for a, b, n in audit(db_dsn)] == [
        ("ops", "retry_filter", 2),
        ("ops", "retry_filter", 3),
    ]
    # A bad filter is a 400, wherever it is.
    assert "since" in error(batch({"filter": {"since": "yesterday"}}), 400)
    error(batch({"filter": {"error_fingerprint": "XYZ"}}), 400)
    error(batch({"filter": {"event_type": ""}}), 400)
    error(batch({"filter": {"colour": "red"}}), 400)


# -- bad input --------------------------------------------------------------------------------


def test_bad_input_is_400_or_422_with_a_json_message(server: Server, db_dsn: str) -> None:
    seed(db_dsn)
    get = server.client.get
    for params in (
        {"limit": "0"},
        {"limit": "abc"},
        {"limit": "100001"},
        {"offset": "-1"},
        {"after_id": "x"},
        {"since": "garbage"},
        {"until": "2024-13-45"},
        {"since": "2024-05-02", "until": "2024-05-01"},
        {"event_type": ""},
        {"event_type": "x" * 1001},
        {"error_fingerprint": "not-a-fingerprint"},
    ):
        error(get("/api/dead-events", params=params, headers=AUTH), 400)
    error(get("/api/dead-events/stats", params={"by": "colour"}, headers=AUTH), 400)
    error(get("/api/dead-events/stats", params={"since": "soon"}, headers=AUTH), 400)

    post = server.client.post
    url = "/api/dead-events/retry-batch"
    for body in ({}, {"ids": []}, {"ids": ["x"]}, {"ids": [0]}, {"ids": [1], "filter": {}},
                 {"ids": [1], "extra": True}, {"ids": [1], "limit": 5}, [], "ids",
                 {"filter": {}, "skip_invalid": True}):  # fmt: skip
        error(post(url, json=body, headers=AUTH), 422)
    error(post(url, content=b"{not json", headers={**AUTH, "content-type": "application/json"}),
          422)  # fmt: skip
    error(get("/no/such/route"), 404)
    error(server.client.delete("/api/dead-events/1", headers=AUTH), 405)


# -- the database and the schema ---------------------------------------------------------------


def test_database_down_is_503_and_never_shows_the_password(tmp_path: Path) -> None:
    dsn = f"host=127.0.0.1 port={free_port()} dbname=gone user=app password=hunter2-SeCrEt"
    srv = Server(dsn, tmp_path / "serve.log")
    try:
        started = time.monotonic()
        message = error(srv.client.get("/api/dead-events", headers=AUTH), 503)
        assert time.monotonic() - started < 15
        assert "database unavailable" in message or "cannot connect" in message
        error(srv.client.post("/api/dead-events/1/retry", headers=AUTH), 503)
        ready = srv.client.get("/readyz")
        assert "cannot connect to PostgreSQL at host 127.0.0.1" in error(ready, 503)
        assert srv.client.get("/healthz").json() == {"status": "ok"}
        metrics = srv.client.get("/metrics").text
        assert "dispatchbox_database_up 0.0" in metrics
        bodies = [ready.text, message, metrics]
    finally:
        assert srv.stop() == 0
    assert all("hunter2" not in b for b in bodies)
    assert "hunter2" not in srv.log()


def test_schema_not_current_is_503_naming_the_fix(empty_db_dsn: str, tmp_path: Path) -> None:
    srv = Server(empty_db_dsn, tmp_path / "serve.log")
    try:
        assert "missing migrations" in error(srv.client.get("/readyz"), 503)
        message = error(srv.client.get("/api/dead-events", headers=AUTH), 503)
        assert "dispatchbox db migrate" in message
    finally:
        assert srv.stop() == 0


# -- starting the server -------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_token(db_dsn: str) -> None:
    result = run_cli("serve", "--port", str(free_port()), dsn=db_dsn, timeout=30)
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("dispatchbox: error: DISPATCHBOX_API_TOKEN is not set")
    both = run_cli("serve", "--insecure-no-auth", dsn=db_dsn, env={"DISPATCHBOX_API_TOKEN": SECRET})
    assert both.code == 2 and "contradict" in both.stderr
    assert SECRET not in both.stderr
    bad = run_cli("serve", dsn=db_dsn, env={"DISPATCHBOX_API_TOKEN": "ops:"})
    assert bad.code == 2 and bad.stderr.strip().endswith("token 1 (ops) has no secret")


def test_insecure_no_auth_says_so_loudly_and_serves_without_a_token(
    db_dsn: str, tmp_path: Path
) -> None:
    ids = seed(db_dsn)
    srv = Server(db_dsn, tmp_path / "serve.log", "--insecure-no-auth", token=None)
    try:
        assert ok(srv.client.get("/api/dead-events"))["total"] == 8
        ok(srv.client.post(f"/api/dead-events/{ids['pay'][0]}/retry"))
    finally:
        assert srv.stop() == 0
    assert "WITHOUT AUTHENTICATION" in srv.log()
    assert audit(db_dsn) == [("api", "retry", 1)]


def test_serve_metrics_match_the_database(server: Server, db_dsn: str) -> None:
    seed(db_dsn)
    text = server.client.get("/metrics").text
    assert server.client.get("/metrics").headers["content-type"].startswith("text/plain")
    assert (
        'dispatchbox_dead_events_current{aggregate_type="order",event_type="pay.failed"} 5.0'
        in text
    )
    assert (
        'dispatchbox_dead_events_current{aggregate_type="user",event_type="mail.bounced"} 3.0'
        in text
    )
    assert "dispatchbox_pending_events 1.0" in text
    assert "dispatchbox_database_up 1.0" in text


# -- the OpenAPI document, fuzzed ---------------------------------------------------------------


@pytest.mark.slow
def test_fuzzing_the_openapi_document_finds_no_server_error(
    server: Server, db_dsn: str, tmp_path: Path
) -> None:
    seed(db_dsn)
    document = ok(server.client.get("/openapi.json"))
    assert set(document["paths"]) == {
        "/api/dead-events",
        "/api/dead-events/stats",
        "/api/dead-events/{event_id}",
        "/api/dead-events/{event_id}/retry",
        "/api/dead-events/retry-batch",
        "/api/breakers",
        "/api/breakers/{name}/{action}",
        "/api/dead-events/redrive-plan",
        "/api/dead-events/diff",
        "/api/redrive-operations",
        "/api/redrive-operations/{op_id}",
        "/api/redrive-operations/{op_id}/run",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    checks = ",".join(
        [
            "not_a_server_error",
            "status_code_conformance",
            "content_type_conformance",
            "response_schema_conformance",
            "ignored_auth",
        ]
    )
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{server.base}/openapi.json",
            "--header",
            f"Authorization: Bearer {SECRET}",
            "--checks",
            checks,
            "--max-examples",
            "40",
            "--seed",
            "20240501",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "generated" in output
    assert not re.search(r'HTTP/1\.1" 5\d\d', server.log()), "a 5xx in the access log"
