"""The console over plain HTTP (no browser): access rules, cookies, error pages, purge."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.console.conftest import OPS_SECRET, TOKENS, Process, start_serve, wait_until

PAGES = [
    "/ui/",
    "/ui/partials/overview",
    "/ui/dead",
    "/ui/dead?view=groups",
    "/ui/events/1",
    "/ui/audit",
    "/ui/retry",
    "/ui/purge",
]
ACTIONS = [
    "/ui/events/1/retry",
    "/ui/events/1/edit",
    "/ui/retry",
    "/ui/purge",
    "/ui/breakers/payments/open",
    "/ui/logout",
]


def dead_event(dsn: str, *, status: str = "dead", error: str = "boom") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,"
            " attempts, last_error, dead_at) VALUES ('order', '1', 'x.y', '{\"a\": 1}', %s, 5,"
            " %s, CASE WHEN %s = 'dead' THEN now() - interval '40 days' END) RETURNING id",
            [status, error, status],
        ).fetchone()
    assert row is not None
    return int(row[0])


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def signed_in(base: str, secret: str = OPS_SECRET) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30)
    page = client.get("/ui/login")
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    answer = client.post(
        "/ui/login", data={"csrf": csrf_of(page.text), "token": secret, "next": "/ui/dead"}
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/dead"
    session = answer.headers["set-cookie"]
    assert session.startswith("dispatchbox_session=")
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/ui" in session
    assert secret not in session
    return client


def test_every_page_and_action_needs_a_session(console_server: tuple[str, Process]) -> None:
    base, _ = console_server
    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for path in PAGES:
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"].startswith("/ui/login?next=")
        for path in ACTIONS:
            response = anonymous.post(path, data={"csrf": "x"})
            assert response.status_code == 401, path
            assert "Sign in first" in response.text
        assert anonymous.get("/ui/static/console.js").status_code == 200
        login = anonymous.get("/ui/login")
        assert "default-src 'self'" in login.headers["content-security-policy"]
        assert login.headers["x-frame-options"] == "DENY"
        # A login without the form's token is refused, even with the right secret.
        refused = anonymous.post("/ui/login", data={"token": OPS_SECRET})
        assert refused.status_code == 403 and "security token" in refused.text


def test_bad_input_gets_a_clear_page_and_changes_nothing(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    dead = dead_event(db_dsn)
    done = dead_event(db_dsn, status="done")
    client = signed_in(base)
    page = client.get("/ui/dead", params={"since": "yesterday"})
    assert page.status_code == 400 and "Bad filter: since:" in page.text
    page = client.get("/ui/dead", params={"error_fingerprint": "zz"})
    assert page.status_code == 400 and "12 lowercase hex digits" in page.text
    assert client.get("/ui/events/999999").status_code == 404
    csrf = csrf_of(client.get(f"/ui/events/{dead}").text)
    bad = client.post(f"/ui/events/{dead}/edit", data={"csrf": csrf, "payload": '{"a": '})
    assert bad.status_code == 400 and "not valid JSON" in bad.text and "line 1" in bad.text
    not_dead = client.post(f"/ui/events/{done}/edit", data={"csrf": csrf, "payload": "{}"})
    assert not_dead.status_code == 409 and "is not dead" in not_dead.text
    limit = client.post("/ui/retry", data={"csrf": csrf, "rate": "0"})
    assert limit.status_code == 400 and "from 1 to 10000" in limit.text
    breakers = client.post("/ui/breakers/payments/open", data={"csrf": csrf})
    # serve wires the delivery controls' breakers: an unknown name is a clear 404.
    assert breakers.status_code == 404 and "No breaker named payments." in breakers.text
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT id, status, payload FROM outbox_event ORDER BY id").fetchall()
        audit = conn.execute("SELECT count(*) FROM outbox_dead_letter_audit").fetchone()
    assert rows == [(dead, "dead", {"a": 1}), (done, "done", {"a": 1})]
    assert audit == (0,)


def test_purge_by_filter_after_its_count_archives_and_audits(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    old = [dead_event(db_dsn, error="SMTPError: mailbox full") for _ in range(3)]
    other = dead_event(db_dsn, error="KeyError: 'x'")
    client = signed_in(base)
    confirm = client.get("/ui/purge", params={"error_contains": "mailbox", "older_than_days": "30"})
    assert "Dry run: 3 dead events match now." in confirm.text
    done = client.post(
        "/ui/purge",
        data={"csrf": csrf_of(confirm.text), "error_contains": "mailbox", "older_than_days": "30"},
    )
    assert done.status_code == 200 and "3 dead events moved to the archive." in done.text
    with psycopg.connect(db_dsn) as conn:
        left = [r[0] for r in conn.execute("SELECT id FROM outbox_event").fetchall()]
        archived = conn.execute("SELECT count(*) FROM outbox_event_archive").fetchone()
        audit = conn.execute(
            "SELECT actor, action, affected FROM outbox_dead_letter_audit"
        ).fetchall()
    assert left == [other] and archived == (3,) and len(old) == 3
    assert audit == [("alice", "purge", 3)]


def test_the_destination_filter_narrows_the_list_and_the_overview_counts_by_destination(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    erp = [dead_event(db_dsn, error="HTTPError: 503") for _ in range(3)]
    smtp = [dead_event(db_dsn, error="SMTPError: 552") for _ in range(2)]
    unknown = dead_event(db_dsn, error="KeyError: 'x'")
    with psycopg.connect(db_dsn) as conn:
        conn.execute("UPDATE outbox_event SET destination = 'erp' WHERE id = ANY(%s)", [erp])
        conn.execute("UPDATE outbox_event SET destination = 'smtp' WHERE id = ANY(%s)", [smtp])
    client = signed_in(base)

    def listed(html: str) -> tuple[str, set[int]]:
        total = re.search(r'<strong id="total">([^<]+)</strong>', html)
        assert total, html
        return total.group(1), {int(i) for i in re.findall(r'class="event-link">(\d+)<', html)}

    assert listed(client.get("/ui/dead").text) == ("6", {*erp, *smtp, unknown})
    page = client.get("/ui/dead", params={"destination": "erp"})
    assert page.status_code == 200 and 'name="destination" value="erp"' in page.text
    assert listed(page.text) == ("3", set(erp))
    groups = client.get("/ui/dead", params={"destination": "smtp", "view": "groups"}).text
    assert re.search(r'<strong id="total">2</strong>', groups)
    assert '<span class="chip">smtp · 2</span>' in groups and "erp · " not in groups
    confirm = client.get("/ui/retry", params={"destination": "erp"})
    assert "Dry run: 3 dead events match now." in confirm.text
    assert 'id="conflicts"' not in confirm.text, "nothing to conflict with"
    overview = client.get("/ui/").text
    table = overview.split('id="by-destination"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r'<tr><td>(.*?)</td><td class="num">(\d+)</td></tr>', table)
    assert rows == [
        ('<a href="/ui/dead?destination=erp">erp</a>', "3"),
        ('<a href="/ui/dead?destination=smtp">smtp</a>', "2"),
        ('<span class="muted">not recorded</span>', "1"),
    ]


def test_a_masked_token_sees_no_secret_and_may_not_edit(db_dsn: str, tmp_path: Path) -> None:
    unmasked = secrets.token_hex(16)
    base, server = start_serve(
        db_dsn,
        tmp_path / "serve.log",
        DISPATCHBOX_API_TOKEN=f"{TOKENS},carol:{unmasked}",
        DISPATCHBOX_REDACT="payload.card.number",
        DISPATCHBOX_PAYLOAD_ROLES="carol",
    )
    try:
        card = {"card": {"number": "4111111111111111"}, "total": 5}
        with psycopg.connect(db_dsn) as conn:
            row = conn.execute(
                "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload,"
                " status, attempts, last_error, dead_at) VALUES ('order', '1', 'x.y', %s, 'dead',"
                " 5, 'boom', now()) RETURNING id",
                [psycopg.types.json.Jsonb(card)],
            ).fetchone()
        assert row is not None
        event_id = int(row[0])
        alice = signed_in(base)  # an operator, but not in DISPATCHBOX_PAYLOAD_ROLES
        page = alice.get(f"/ui/events/{event_id}").text
        assert "4111111111111111" not in page and "***" in page
        assert 'id="payload-editor"' not in page and 'id="edit-masked"' in page
        refused = alice.post(
            f"/ui/events/{event_id}/edit",
            data={"csrf": csrf_of(page), "payload": '{"card": {"number": "***"}}'},
        )
        assert refused.status_code == 403 and "DISPATCHBOX_PAYLOAD_ROLES" in refused.text
        carol = signed_in(base, unmasked)
        page = carol.get(f"/ui/events/{event_id}").text
        assert "4111111111111111" in page and 'id="payload-editor"' in page
        with psycopg.connect(db_dsn) as conn:
            stored = conn.execute(
                "SELECT status, payload FROM outbox_event WHERE id = %s", [event_id]
            ).fetchone()
        assert stored == ("dead", card)
    finally:
        assert server.stop() == 0, server.log()
    assert unmasked not in server.log() and "4111111111111111" not in server.log()


@pytest.fixture
def open_server(db_dsn: str, tmp_path: Path) -> tuple[str, Process]:
    return start_serve(db_dsn, tmp_path / "serve.log", "--insecure-no-auth")


def test_without_tokens_the_console_never_opens(open_server: tuple[str, Process]) -> None:
    base, srv = open_server
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            page = client.get("/ui/login")
            assert "The console needs DISPATCHBOX_API_TOKEN" in page.text
            answer = client.post("/ui/login", data={"csrf": csrf_of(page.text), "token": "x"})
            assert answer.status_code == 401
            assert client.get("/ui/").status_code == 303
    finally:
        assert srv.stop() == 0


def test_a_server_fault_is_a_page_and_a_log_line_without_details(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, server = console_server
    client = signed_in(base)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("DROP TABLE outbox_dead_letter_audit CASCADE")  # the redrive FK too
    page = client.get("/ui/audit")
    assert page.status_code == 500
    assert "Something failed on the server" in page.text
    assert "outbox_dead_letter_audit" not in page.text
    wait_until(lambda: "console_unexpected_error path=/ui/audit" in server.log(), "the log line")


def test_the_retry_dry_run_names_events_that_would_overtake_a_dead_one(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, status,"
            " attempts, last_error, dead_at) VALUES"
            " ('order', 'x', 'x.y', 'dead', 5, 'KeyError: sku', now()),"
            " ('order', 'x', 'x.y', 'dead', 5, 'ConnectionError: refused', now())"
            " RETURNING id"
        ).fetchall()
    second = int(rows[1][0])
    client = signed_in(base)
    confirm = client.get("/ui/retry", params={"error_contains": "refused"})
    assert "Dry run: 1 dead events match now." in confirm.text
    assert (
        f"1 behind a dead event the filter leaves out (they would overtake it), e.g. {second}"
        in confirm.text
    )


def test_the_overview_estimates_a_big_backlog_as_db_status_does(
    console_server: tuple[str, Process], db_dsn: str
) -> None:
    # Ten million pending events must not cost the overview a count of every one: above 10,000
    # the tile shows the planner's estimate, marked ~; at or below, the exact count.
    base, _ = console_server
    client = signed_in(base)

    def pending_tile() -> str:
        found = re.search(
            r'<span class="value" id="count-pending"([^>]*)>([^<]+)<', client.get("/ui/").text
        )
        assert found
        return found.group(1) + ">" + found.group(2)

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload,"
            " next_attempt_at) SELECT 'order', g::text, 'x.y', '{}', now() + interval '1 day'"
            " FROM generate_series(1, 300) g"
        )
        wait_until(lambda: pending_tile() == ">300", "the 300 pending events counted")
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload,"
            " next_attempt_at) SELECT 'order', g::text, 'x.y', '{}', now() + interval '1 day'"
            " FROM generate_series(1, 20000) g"
        )
        conn.execute("ANALYZE outbox_event")

    # The overview is read at most every OVERVIEW_CACHE_SECONDS: wait for the next read.
    def estimated() -> str | None:
        tile = pending_tile()
        return tile if "~" in tile else None

    tile = wait_until(estimated, "the backlog estimated")
    assert tile.startswith(' title="Estimated from the planner') and ">~" in tile, tile
    estimate = int(tile.rsplit("~", 1)[1])
    assert 10_000 < estimate <= 40_000, tile
