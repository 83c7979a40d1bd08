"""The console in a real browser: headless Chromium against a real `dispatchbox serve`, a real
worker delivering what the console redrives, and a real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.console.conftest import (
    OPS_SECRET,
    READER_SECRET,
    Process,
    artifacts,
    login,
    seed_through_worker,
    statuses,
    wait_until,
)


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


def audit_rows(dsn: str) -> list[tuple[str, str, list[int] | None, dict[str, Any]]]:
    with psycopg.connect(dsn) as conn:
        return [
            (a, b, c, d)
            for a, b, c, d in conn.execute(
                "SELECT actor, action, event_ids, details FROM outbox_dead_letter_audit ORDER BY id"
            ).fetchall()
        ]


def delivered(record_dir: Path) -> dict[int, str]:
    out = {}
    for path in record_dir.glob("ok-*.log"):
        for line in path.read_text().splitlines():
            _, event_id, customer = line.split(" ", 2)
            out[int(event_id)] = customer
    return out


def test_operator_filters_fixes_a_payload_and_retries_a_group(
    browser: Any,
    console_server: tuple[str, Process],
    worker: Process,
    db_dsn: str,
    record_dir: Path,
) -> None:
    base, server = console_server
    ids = seed_through_worker(db_dsn)

    # A wrong token is refused with a message, and not echoed back.
    context = browser.new_context(base_url=base, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto("/ui/dead")
    page.fill("#token", "alice:not-" + OPS_SECRET)
    page.click("button[type=submit]")
    assert page.inner_text(".problem") == "That token is not valid."
    assert OPS_SECRET not in page.content()
    context.close()

    page = login(browser, base, OPS_SECRET)
    assert page.inner_text("#count-dead") == "49"
    assert "alice" in page.inner_text("#actor")
    assert page.locator("svg.chart rect.bar").count() == 24
    shot(page, "overview")
    # The overview refreshes itself: a death after the page loaded shows up without a reload.
    with psycopg.connect(db_dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,"
            " attempts, last_error, dead_at) VALUES ('invoice', 'I-99', 'mail.sent', '{}',"
            " 'dead', 5, 'SMTPError: 552 mailbox of user I-99 full', now())"
        )
    wait_until(lambda: page.inner_text("#count-dead") == "50", "the overview's refresh")

    # Filter: the CLI's filters, here by event type.
    page.click("text=Dead events")
    page.fill("input[name=event_type]", "console.order")
    page.click("#apply-filter")
    assert page.inner_text("#total") == "3"
    assert page.locator("a.event-link").count() == 3
    shot(page, "dead-events")

    # Grouped by error fingerprint: one row a group, with the types it hits.
    page.goto("/ui/dead?view=groups")
    rows = page.locator("#groups tbody tr")
    assert rows.count() == 4
    assert "console.flaky · 6" in page.inner_text("#groups")
    shot(page, "groups")

    # Open an event: payload, headers, every attempt with its traceback, checksum.
    order = ids["orders"][0]
    page.goto(f"/ui/events/{order}")
    assert json.loads(page.inner_text("#payload"))["order_id"] == 0
    assert json.loads(page.inner_text("#headers")) == {"trace_id": "trace-0"}
    attempts = page.locator("details.attempt")
    assert attempts.count() == 2
    assert "KeyError" in page.inner_text("details.attempt >> nth=1")
    assert "Traceback" in page.locator("details.attempt >> nth=1 >> pre").inner_text()
    shot(page, "event")

    # Edit and redrive: invalid JSON disables the button (and the server would refuse it).
    editor = page.locator("#payload-editor")
    editor.fill('{"order_id": 0,')
    assert page.locator("#save-redrive").is_disabled()
    fixed = {"order_id": 0, "total": "19.90", "currency": "EUR", "customer": "C-42"}
    editor.fill(json.dumps(fixed, indent=2))
    assert page.locator("#save-redrive").is_enabled()
    page.click("#save-redrive")
    assert "payload saved" in page.inner_text("#notice")
    # The running worker delivers the fixed event; the page shows it done.
    wait_until(lambda: delivered(record_dir).get(order) == "C-42", "the fixed event's delivery")

    def shows_done() -> bool:
        page.reload()
        return page.inner_text("#status") == "done"

    wait_until(shows_done, "the event page to show done")
    assert "alice" in page.inner_text("#lineage")
    audit_text = page.inner_text("table.audit")
    assert "alice" in audit_text and '+  "customer": "C-42"' in audit_text
    shot(page, "event-redriven")
    actor, action, event_ids, details = audit_rows(db_dsn)[-1]
    assert (actor, action, event_ids) == ("alice", "retry", [order])
    assert details["edited_payload"] is True
    assert '+  "customer": "C-42",' in details["diff"]

    # Retry a group: the downstream is back; the confirm page shows the dry-run count first.
    (record_dir / "healthy").touch()
    page.goto("/ui/dead?view=groups&event_type=console.flaky")
    page.click("#groups a.button")
    assert page.inner_text("#dry-run") == "Dry run: 6 dead events match now."
    assert all(statuses(db_dsn)[i] == "dead" for i in ids["flaky"])  # the dry run changed nothing
    shot(page, "retry-confirm")
    page.fill("input[name=rate]", "50")
    page.click("#confirm")
    assert page.inner_text("#result") == "6 events sent back to pending."
    wait_until(lambda: set(ids["flaky"]) <= delivered(record_dir).keys(), "the group's delivery")
    actor, action, _, details = audit_rows(db_dsn)[-1]
    assert (actor, action, details["rate"]) == ("alice", "retry_filter", 50.0)

    page.goto("/ui/audit")
    shot(page, "audit")
    page.click("text=Sign out")
    page.wait_for_url(base + "/ui/login")
    page.goto("/ui/")
    assert "/ui/login" in page.url
    assert OPS_SECRET not in server.log()


def test_a_post_without_the_csrf_token_is_refused(
    browser: Any, console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    with psycopg.connect(db_dsn) as conn:
        (event_id,) = conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,"
            " attempts, last_error, dead_at) VALUES ('order', '1', 'x.y', '{}', 'dead', 5,"
            " 'boom', now()) RETURNING id"
        ).fetchone()
    page = login(browser, base, OPS_SECRET)
    # The browser holds a valid session cookie; the forged forms lack the session's token.
    for form in ({}, {"csrf": "forged"}):
        response = page.request.post(f"/ui/events/{event_id}/retry", form=form, max_redirects=0)
        assert response.status == 403
        assert "security token is missing or stale" in response.text()
    # A page of another site (localhost is not the same site as 127.0.0.1) posting to the
    # console: the browser sends no session cookie (SameSite=Strict), and it has no token.
    page.goto(base.replace("127.0.0.1", "localhost") + "/healthz")
    page.set_content(f'<form method="post" action="{base}/ui/events/{event_id}/retry"></form>')
    with page.expect_navigation():
        page.evaluate("document.forms[0].submit()")
    assert "Sign in first" in page.inner_text("#problem")
    shot(page, "csrf-refused")
    assert statuses(db_dsn)[event_id] == "dead"
    # The same request with the session's token goes through.
    page.goto(f"/ui/events/{event_id}")
    page.click("#retry-one")
    assert "sent back to pending" in page.inner_text("#notice")
    assert statuses(db_dsn)[event_id] == "pending"


def test_a_reader_sees_no_action_and_cannot_post_one(
    browser: Any, console_server: tuple[str, Process], db_dsn: str
) -> None:
    base, _ = console_server
    with psycopg.connect(db_dsn) as conn:
        (event_id,) = conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,"
            " attempts, last_error, dead_at) VALUES ('order', '1', 'x.y', '{\"a\": 1}', 'dead',"
            " 5, 'boom', now()) RETURNING id"
        ).fetchone()
    page = login(browser, base, READER_SECRET)
    assert "reader" in page.inner_text("header")
    for path in (f"/ui/events/{event_id}", "/ui/dead", "/ui/dead?view=groups", "/ui/retry"):
        page.goto(path)
        assert page.locator("form[method=post]:not([action$='/logout'])").count() == 0, path
        assert page.locator("a.button").count() == 0, path
    page.goto(f"/ui/events/{event_id}")
    shot(page, "reader-event")
    csrf = page.locator("header input[name=csrf]").input_value()
    response = page.request.post(
        f"/ui/events/{event_id}/retry", form={"csrf": csrf}, max_redirects=0
    )
    assert response.status == 403
    assert "only look" in response.text()
    assert statuses(db_dsn)[event_id] == "dead"


def test_polish_pages_by_browser_language_and_by_the_switch(
    browser: Any, console_server: tuple[str, Process], worker: Process, db_dsn: str
) -> None:
    base, _ = console_server
    ids = seed_through_worker(db_dsn)
    page = login(browser, base, OPS_SECRET, locale="pl-PL")
    assert page.inner_text("h1").startswith("Przegląd")
    shot(page, "pl-overview")
    page.goto("/ui/dead?view=groups")
    assert "Grupowane według błędu" in page.inner_text("main")
    shot(page, "pl-groups")
    page.goto(f"/ui/events/{ids['orders'][1]}")
    assert "Historia prób" in page.inner_text("main")
    shot(page, "pl-event")
    page.goto("/ui/dead?view=groups&event_type=console.flaky")
    page.click("#groups a.button")
    assert page.inner_text("#dry-run") == "Próba na sucho: pasuje teraz 6 martwych zdarzeń."
    shot(page, "pl-retry-confirm")
    page.goto(f"/ui/events/{ids['orders'][1]}")
    # The switch wins over the browser's language, and keeps the page.
    page.click("a.lang")
    assert page.inner_text("h1").startswith("Event")
    assert f"/ui/events/{ids['orders'][1]}" in page.url
