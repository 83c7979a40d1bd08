"""The Python example of the dead-letter concept (seed 004, "Przykładowe użycie") runs as written.

SEED_EXAMPLE is the seed's code block copied character for character; the test only puts a real
DSN where the seed wrote ``"..."``, makes event 123 dead (the id the seed retries), and runs the
block line for line, reading what it prints.
"""

from __future__ import annotations

import contextlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from dispatchbox import OutboxRepository
from tests.integration.test_repository import make_dead

SEED_EXAMPLE = """\
# W kodzie aplikacji lub CLI:

from dispatchbox.repository import OutboxRepository

repo = OutboxRepository(dsn="...")

# Sprawdź ile mamy dead eventów
count = repo.count_dead_events()
print(f"Dead events: {count}")

# Pobierz ostatnie 10 dead eventów
dead_events = repo.fetch_dead_events(limit=10)
for event in dead_events:
    print(f"Event {event.id}: {event.event_type} - {event.attempts} attempts")

# Retry pojedynczego eventu (po naprawie problemu)
if repo.retry_dead_event(event_id=123):
    print("Event reset to pending, will be retried")
else:
    print("Event not found or not dead")
"""


def run_example(dsn: str) -> list[str]:
    assert SEED_EXAMPLE.count('dsn="..."') == 1
    code = SEED_EXAMPLE.replace('dsn="..."', f"dsn={dsn!r}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "seed_004_example.py", "exec"), {"__name__": "seed_example"})
    return out.getvalue().splitlines()


def test_the_seed_example_runs_as_written(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        # The seed retries event 123: make the next identity value 123, and that event dead.
        conn.execute("SELECT setval(pg_get_serial_sequence('outbox_event', 'id'), 122)")
        [first] = make_dead(conn, 1, event_type="order.created", attempts=5)
        more = make_dead(conn, 2, event_type="payment.captured", attempts=3)
    assert first == 123

    lines = run_example(db_dsn)

    assert lines[0] == "Dead events: 3"
    assert sorted(lines[1:4]) == sorted(
        [
            "Event 123: order.created - 5 attempts",
            f"Event {more[0]}: payment.captured - 3 attempts",
            f"Event {more[1]}: payment.captured - 3 attempts",
        ]
    )
    assert lines[4:] == ["Event reset to pending, will be retried"]
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("SELECT status, attempts FROM outbox_event WHERE id = 123").fetchone()
    assert row == ("pending", 0)

    # Event 123 gone: the seed's else branch. (Had 123 existed and not been dead, the call
    # raises EventNotDead, a ValueError, as the seed's own docstring for retry_dead_event says.)
    with psycopg.connect(db_dsn) as conn:
        conn.execute("DELETE FROM outbox_event_error WHERE event_id = 123")
        conn.execute("DELETE FROM outbox_event WHERE id = 123")
    again = run_example(db_dsn)
    assert again[0] == "Dead events: 2"
    assert again[-1] == "Event not found or not dead"


def test_keywords_of_the_seed_and_positional_calls_both_work(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        ids = make_dead(conn, 4)
        old = make_dead(conn, 1, dead_at=datetime.now(UTC) - timedelta(days=31))
        young = make_dead(conn, 1, dead_at=datetime.now(UTC) - timedelta(days=29))
    positional = OutboxRepository(db_dsn)
    keyword = OutboxRepository(dsn=db_dsn)
    assert positional.count_dead_events() == keyword.count_dead_events() == 6

    assert keyword.retry_dead_events_batch(event_ids=[ids[0]], actor="t") == 1
    assert positional.retry_dead_events_batch([ids[1]], actor="t") == 1
    assert positional.retry_dead_events_batch(ids=[ids[2]], actor="t") == 1
    with pytest.raises(TypeError):
        keyword.retry_dead_events_batch([ids[3]], event_ids=[ids[3]])  # type: ignore[misc]
    with pytest.raises(TypeError):
        keyword.retry_dead_events_batch()
    with pytest.raises(TypeError):
        OutboxRepository(db_dsn, dsn=db_dsn)
    with pytest.raises(TypeError):
        OutboxRepository()

    # The seed's default: 30 days, by dead_at; the 31-day-old one moves to the archive.
    assert keyword.cleanup_old_dead_events(actor="t") == 1
    with psycopg.connect(db_dsn) as conn:
        archived: Any = conn.execute(
            "SELECT id FROM outbox_event_archive WHERE status = 'dead'"
        ).fetchall()
        left = conn.execute("SELECT id FROM outbox_event WHERE id = %s", young).fetchall()
    assert [r[0] for r in archived] == old
    assert [r[0] for r in left] == young


def test_the_repository_takes_a_pool_by_keyword(db_dsn: str) -> None:
    from psycopg_pool import ConnectionPool

    with psycopg.connect(db_dsn) as conn:
        make_dead(conn, 2)
    with ConnectionPool(db_dsn, min_size=1, max_size=1) as pool:
        assert OutboxRepository(pool=pool).count_dead_events() == 2
        with pytest.raises(TypeError):
            OutboxRepository(pool=db_dsn)  # type: ignore[arg-type]
