"""Migration 0009 on a populated outbox: no table rewrite, existing events keep a NULL checksum
(unknown, never reported)."""

from __future__ import annotations

import psycopg

from dispatchbox import migrations
from dispatchbox.data import queries


def test_0009_adds_its_columns_without_rewriting_a_populated_outbox(empty_db_dsn: str) -> None:
    shipped = migrations.available()
    before = [m for m in shipped if m.version < 9]
    (m9,) = [m for m in shipped if m.version == 9]
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        for m in before:
            queries.execute_script(conn, m.path.read_text(encoding="utf-8"))
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)"
            " SELECT 'order', g::text, 'order.created', jsonb_build_object('n', g)"
            " FROM generate_series(1, 5000) g"
        )
        (node,) = conn.execute("SELECT pg_relation_filenode('outbox_event')").fetchone() or (0,)
        queries.execute_script(conn, m9.path.read_text(encoding="utf-8"))
        (after,) = conn.execute("SELECT pg_relation_filenode('outbox_event')").fetchone() or (0,)
        assert after == node, "the table was rewritten"
        row = conn.execute(
            "SELECT count(*), count(payload_sha256), count(expires_at), count(parked_by)"
            " FROM outbox_event"
        ).fetchone()
        assert row == (5000, 0, 0, 0)
        mismatched = conn.execute(
            "SELECT count(*) FROM outbox_event"
            " WHERE payload_sha256 <> outbox_payload_sha256(payload)"
        ).fetchone()
        assert mismatched == (0,), "NULL checksums are never a mismatch"
