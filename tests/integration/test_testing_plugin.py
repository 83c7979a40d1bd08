"""dispatchbox.testing, as a user's suite uses it: a test file of theirs run by a real pytest."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox import Dispatcher, OutboxEvent, publish
from dispatchbox.testing import published_events, run_handlers
from tests.pg import PgServer

USER_TESTS = """
import psycopg
import pytest

from dispatchbox import Dispatcher, OutboxEvent, PermanentError, publish
from dispatchbox.testing import published_events, run_handlers

pytest_plugins = ["dispatchbox.testing"]

dispatcher = Dispatcher()
SENT = []


@dispatcher.handler("order.created")
def send_email(event: OutboxEvent) -> None:
    if event.payload.get("email") is None:
        raise PermanentError("no e-mail address")
    SENT.append(event.payload["email"])


def place_order(conn, order_id, email):
    with conn.transaction():
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO orders VALUES (%s)", (order_id,))
        publish(conn, aggregate_type="order", aggregate_id=str(order_id),
                event_type="order.created", payload={"email": email})


def test_an_order_publishes_one_event_and_the_handler_sends_it(outbox_conn):
    place_order(outbox_conn, 1, "a@example.com")
    events = published_events(outbox_conn, event_type="order.created", status="pending")
    assert [e.payload for e in events] == [{"email": "a@example.com"}]
    run_handlers(dispatcher, events)
    assert SENT == ["a@example.com"]


def test_a_rolled_back_order_publishes_nothing(outbox_conn):
    with pytest.raises(psycopg.errors.UniqueViolation):
        place_order(outbox_conn, 1, "a@example.com")
        place_order(outbox_conn, 1, "b@example.com")
    assert len(published_events(outbox_conn)) == 1


def test_each_test_gets_an_empty_outbox(outbox_conn, outbox_dsn):
    assert published_events(outbox_conn) == []
    assert "outbox_test_" in outbox_dsn


def test_a_bad_payload_is_permanent(outbox_conn):
    place_order(outbox_conn, 2, None)
    with pytest.raises(PermanentError):
        run_handlers(dispatcher, published_events(outbox_conn))
"""


def test_a_users_suite_runs_on_fresh_migrated_databases(
    pg_server: PgServer, tmp_path: Path
) -> None:
    (tmp_path / "test_orders.py").write_text(USER_TESTS)
    env = {**os.environ, "DISPATCHBOX_TEST_DSN": pg_server.admin_dsn}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_orders.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout
    # The session's template and the per-test databases are gone afterwards.
    with psycopg.connect(pg_server.admin_dsn, autocommit=True) as admin:
        left = admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'outbox_test_%%'"
            " OR datname LIKE 'dispatchbox_testing_template_%%'"
        ).fetchall()
    assert left == []


def test_run_handlers_calls_async_and_batch_handlers(conn: psycopg.Connection[Any]) -> None:
    dispatcher = Dispatcher()
    seen: list[Any] = []

    @dispatcher.handler("one.async")
    async def one(event: OutboxEvent) -> None:
        seen.append(("async", event.aggregate_id))

    @dispatcher.batch_handler("many", max_batch=2)
    def many(events: list[OutboxEvent]) -> None:
        seen.append(("batch", [e.aggregate_id for e in events]))

    for i, event_type in enumerate(["one.async", "many", "many", "many"]):
        publish(conn, aggregate_type="t", aggregate_id=str(i), event_type=event_type, payload={})
    run_handlers(dispatcher, published_events(conn))
    assert seen == [("async", "0"), ("batch", ["1", "2"]), ("batch", ["3"])]


def test_run_handlers_refuses_an_event_without_a_handler(conn: psycopg.Connection[Any]) -> None:
    publish(conn, aggregate_type="t", aggregate_id="1", event_type="nobody.listens", payload={})
    with pytest.raises(LookupError, match=r"nobody\.listens"):
        run_handlers(Dispatcher(), published_events(conn))
