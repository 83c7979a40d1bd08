"""The API's destination filter and label (migration 0007), and the SQL functions' destination
argument, on the real `dispatchbox serve` and psql-callable functions."""

from __future__ import annotations

from typing import Any

import httpx
import psycopg

from tests.acceptance.test_api import AUTH, Server, ok, seed, server, statuses

__all__ = ["server"]  # the fixture, imported for these tests


def label(dsn: str, ids: list[int], destination: str) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "UPDATE outbox_event SET destination = %s WHERE id = ANY(%s)", [destination, ids]
        )


def test_api_filters_counts_and_redrives_by_destination(server: Server, db_dsn: str) -> None:
    ids = seed(db_dsn)
    label(db_dsn, ids["pay"], "payments")  # the mail events keep no destination

    def page(**params: Any) -> Any:
        return ok(server.client.get("/api/dead-events", params=params, headers=AUTH))

    listed = page(destination="payments")
    assert [e["id"] for e in listed["items"]] == ids["pay"] and listed["total"] == 5
    assert {e["destination"] for e in listed["items"]} == {"payments"}
    assert {e["destination"] for e in page(event_type="mail.bounced")["items"]} == {None}
    assert page(destination="nowhere")["total"] == 0
    detail = ok(server.client.get(f"/api/dead-events/{ids['pay'][0]}", headers=AUTH))
    assert detail["destination"] == "payments"

    stats = ok(
        server.client.get("/api/dead-events/stats", params={"by": "destination"}, headers=AUTH)
    )
    assert [(g["key"], g["count"]) for g in stats["by_destination"]] == [
        ("payments", 5),
        (None, 3),
    ]
    narrowed = ok(
        server.client.get(
            "/api/dead-events/stats",
            params={"by": "event_type", "destination": "payments"},
            headers=AUTH,
        )
    )
    assert [(g["key"], g["count"]) for g in narrowed["by_event_type"]] == [("pay.failed", 5)]

    def batch(body: Any) -> httpx.Response:
        return server.client.post("/api/dead-events/retry-batch", json=body, headers=AUTH)

    assert ok(batch({"filter": {"destination": "payments"}, "dry_run": True}))["would_retry"] == 5
    assert ok(batch({"filter": {"destination": "payments"}}))["retried"] == 5
    assert set(statuses(db_dsn, ids["pay"]).values()) == {"pending"}
    assert set(statuses(db_dsn, ids["mail"]).values()) == {"dead"}
    assert (
        server.client.get("/api/dead-events", params={"destination": ""}, headers=AUTH).status_code
        == 400
    )


def test_sql_functions_take_the_destination(db_dsn: str) -> None:
    ids = seed(db_dsn)
    label(db_dsn, ids["pay"][:2], "payments")
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute("SELECT key, count FROM dead_event_stats('destination')").fetchall()
        assert rows == [(None, 6), ("payments", 2)]
        rows = conn.execute(
            "SELECT count FROM dead_event_stats('error', destination => 'payments')"
        ).fetchall()
        assert sum(n for (n,) in rows) == 2
        (processed,) = conn.execute(
            "SELECT processed FROM redrive_dead_events(destination => 'payments', actor => 'dba')"
        ).fetchone() or (0,)
    assert processed == 2
    assert set(statuses(db_dsn, ids["pay"][:2]).values()) == {"pending"}
    assert set(statuses(db_dsn, ids["pay"][2:]).values()) == {"dead"}
