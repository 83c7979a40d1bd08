"""`dispatchbox monitor` against a real database: frames recorded with rich's console."""

from __future__ import annotations

from typing import Any

import psycopg
from rich.console import Console

from dispatchbox import publish_many
from dispatchbox.cli.monitor import render
from dispatchbox.monitor import rates, sample
from tests.conftest import run_cli


def _seed(conn: psycopg.Connection[Any]) -> list[int]:
    ids = publish_many(
        conn,
        [
            {"aggregate_type": "o", "aggregate_id": str(i), "event_type": t, "payload": {}}
            for i, t in enumerate(["pay.failed"] * 4 + ["mail.bounced"] * 2 + ["x.ok"] * 5)
        ],
    )
    conn.execute(
        "UPDATE outbox_event SET status = 'dead', dead_at = now(), last_error = 'boom' "
        "WHERE event_type IN ('pay.failed', 'mail.bounced')"
    )
    conn.execute(
        "UPDATE outbox_event SET status = 'done', done_at = now() - interval '10 seconds' "
        "WHERE id = ANY(%s)",
        [ids[6:9]],
    )
    # The remaining two x.ok stay pending; one is backdated so the oldest age shows.
    conn.execute(
        "UPDATE outbox_event SET next_attempt_at = now() - interval '125 seconds' WHERE id = %s",
        [ids[9]],
    )
    conn.commit()
    return ids


def test_a_frame_shows_counts_dead_by_type_rates_and_the_oldest_age(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        with psycopg.connect(db_dsn) as writer:
            _seed(writer)
        first = sample(conn)
        with psycopg.connect(db_dsn) as writer:
            publish_many(
                writer,
                [
                    {
                        "aggregate_type": "o",
                        "aggregate_id": "n",
                        "event_type": "x.ok",
                        "payload": {},
                    }
                    for _ in range(30)
                ],
            )
        second = sample(conn)
    assert (second.pending, second.running, second.dead) == (32, 0, 6)
    assert second.dead_by_type == [("pay.failed", 4), ("mail.bounced", 2)]
    speed = rates(first, second)
    assert speed.published is not None and speed.published > 0
    assert second.max_id - first.max_id == 30
    assert speed.completed == 3 / 60
    assert rates(None, second).published is None

    console = Console(record=True, width=100, color_system=None)
    console.print(render(second, speed, where="db"))
    text = console.export_text()
    assert "dispatchbox monitor" in text
    lines = [line for line in text.splitlines() if "pay.failed" in line]
    assert len(lines) == 1 and lines[0].split("│")[-3].strip() == "4"
    assert "mail.bounced" in text and "32" in text and "0.1/s" in text
    assert "2 min 5 s" in text or "2 min 6 s" in text
    assert "circuit breakers" not in text  # none in this installation


def test_monitor_once_prints_one_frame_and_exits(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as writer:
        _seed(writer)
    result = run_cli("monitor", "--once", "--interval", "0.2", dsn=db_dsn, timeout=60)
    assert result.code == 0, result.stderr
    assert "dispatchbox monitor" in result.stdout
    assert "pay.failed" in result.stdout and "mail.bounced" in result.stdout
    assert "password" not in result.stdout


def test_monitor_with_an_unreachable_database_says_so_in_one_line(db_dsn: str) -> None:
    result = run_cli(
        "monitor", "--once", dsn="postgresql://nobody:s3cret@127.0.0.1:1/x", timeout=60
    )
    assert result.code == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "s3cret" not in result.stderr


def test_a_big_backlog_is_estimated_and_marked_not_counted(db_dsn: str) -> None:
    # A frame a second must not count ten million pending events: above 10,000 the monitor
    # shows the planner's estimate with a ~, as `db status` does.
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload)"
            " SELECT 'o', g::text, 'x.ok', '{}' FROM generate_series(1, 20000) g"
        )
        conn.execute("ANALYZE outbox_event")
        frame = sample(conn)
    assert frame.estimated == {"pending"}
    assert 10_000 < frame.pending <= 40_000
    console = Console(record=True, width=120)
    console.print(render(frame, rates(None, frame), where="db"))
    assert f"~{frame.pending:,}" in console.export_text()
