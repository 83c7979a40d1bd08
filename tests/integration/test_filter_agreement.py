"""The Python side's error filter (filters._like_pattern: list, count, export, dry run) and the SQL
functions' (outbox_error_like in migration 0005: dead_event_stats, redrive_dead_events) select
the same dead events, for texts where escaping or case could make them disagree."""

from __future__ import annotations

import psycopg
import pytest

from dispatchbox import OutboxRepository
from dispatchbox.filters import DeadEventFilter
from tests.integration.test_repository import make_dead

ERRORS = [
    "ValueError: 100% of a_b",
    "ValueError: 1000 of axb",
    "OSError: C:\\temp\\x failed",
    "OSError: C:temp x failed",
    "KeyError: 'Gateway_Timeout'",
    "KeyError: 'gatewayXtimeout'",
    "RuntimeError: Échec du paiement, 50% refusé",
    "RuntimeError: échec du paiement",
    "RuntimeError: Zażółć gęślą jaźń_1",
    "RuntimeError: zażółć GĘŚLĄ jaźń",
]
# (filter text, how many ERRORS contain it case-insensitively, when that does not depend on the
# database's collation; None where it does: non-ASCII case folding)
CASES = [
    ("%", 2),
    ("_", 3),
    ("\\", 1),
    ("0% of a_b", 1),
    ("C:\\temp\\", 1),
    ("gateway_TIMEOUT", 1),
    ("50%", 1),
    ("\\x", 1),
    ("%_\\", 0),
    ("échec", None),
    ("ÉCHEC", None),
    ("gęślą jaźń_", None),
    ("ZAŻÓŁĆ", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_python_and_sql_filters_select_the_same_dead_events(
    db_dsn: str, text: str, expected: int | None
) -> None:
    with psycopg.connect(db_dsn) as conn:
        for error in ERRORS:
            make_dead(conn, 1, error=error.replace("{", "{{").replace("}", "}}"))
    repo = OutboxRepository(dsn=db_dsn)
    flt = DeadEventFilter(error_contains=text)
    counted = repo.count_dead_events(filter=flt)  # Python-built ILIKE pattern
    listed = len(repo.fetch_dead_events(filter=flt, limit=100))
    stats = repo.dead_event_stats(filter=flt, by=["event_type"]).total  # SQL function
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(count), 0) FROM dead_event_stats('error', error_contains => %s)",
            [text],
        ).fetchone()
    assert row is not None
    redriven = repo.redrive_dead_events(flt, actor="test").processed  # SQL function
    assert counted == listed == stats == int(row[0]) == redriven, text
    if expected is not None:
        assert counted == expected, text
    else:
        assert counted >= 1, text  # at least the row with the same case
    with psycopg.connect(db_dsn) as conn:
        left = conn.execute("SELECT count(*) FROM outbox_event WHERE status = 'dead'").fetchone()
    assert left == (len(ERRORS) - redriven,)
