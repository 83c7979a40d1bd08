"""`dispatchbox dead-events ...` as an operator runs it: the real CLI in a subprocess."""

from __future__ import annotations

import csv
import getpass
import io
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dispatchbox.fingerprint import fingerprint
from tests.conftest import CliResult, run_cli
from tests.integration.test_repository import audit_rows, make_dead, make_live, row_of

Conn = psycopg.Connection[Any]
LONG_ERROR = "RuntimeError: " + "the downstream service answered with something long " * 5


def dead_events(dsn: str, *args: str, **kwargs: Any) -> CliResult:
    return run_cli("dead-events", *args, dsn=dsn, **kwargs)


def one_line_error(result: CliResult, code: int, *needles: str) -> None:
    assert result.code == code, (result.code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dispatchbox: error: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def bulk_dead(conn: Conn, n: int, event_type: str = "bulk.event") -> None:
    conn.execute(
        """
        INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status,
            attempts, max_attempts, last_error, last_error_at, dead_at)
        SELECT 'order', g::text, %s, jsonb_build_object('n', g), 'dead', 5, 5,
               'KeyError: order ' || g, now(), now()
          FROM generate_series(1, %s) g
        """,
        (event_type, n),
    )
    conn.commit()


def status_counts(conn: Conn) -> dict[str, int]:
    rows = conn.execute("SELECT status, count(*) FROM outbox_event GROUP BY 1").fetchall()
    conn.commit()
    return dict(rows)


# -- list -------------------------------------------------------------------------------------


def test_list_table_fits_100_columns_and_every_filter(conn: Conn, db_dsn: str) -> None:
    long_ids = make_dead(conn, 2, event_type="order.paid", error=LONG_ERROR)
    short = make_dead(conn, 3, aggregate_type="invoice", error="ValueError: bad {i}")
    make_live(conn)
    table = dead_events(db_dsn, "list")
    assert table.code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "DEAD",
        "AT",
        "(UTC)",
        "EVENT",
        "TYPE",
        "AGGREGATE",
        "ATT",
        "ERROR",
    ]
    assert len(lines) == 6
    assert max(len(line) for line in lines) <= 100
    assert "…" in lines[1] and "RuntimeError: the downstream" in lines[1]
    assert "5 shown of 5 matching dead events" in table.stderr

    def ids(*args: str) -> list[int]:
        result = dead_events(db_dsn, "list", "--format", "json", *args)
        assert result.code == 0, result.stderr
        return [e["id"] for e in json.loads(result.stdout)]

    assert ids() == long_ids + short
    assert ids("--event-type", "order.paid") == long_ids
    assert ids("--aggregate-type", "invoice") == short
    assert ids("--error-contains", "BAD 1") == [short[1]]
    assert ids("--error-fingerprint", fingerprint("ValueError: bad 0")) == short
    assert ids("--since", "2000-01-01", "--until", "2999-01-01T00:00:00Z") == long_ids + short
    assert ids("--since", "2999-01-01T00:00:00+02:00") == []
    assert ids("--limit", "2", "--offset", "1") == [long_ids[1], short[0]]
    assert ids("--limit", "2", "--after-id", str(short[0])) == short[1:]
    page = dead_events(db_dsn, "list", "--limit", "2")
    assert f"next page: --after-id {long_ids[1]}" in page.stderr
    event = json.loads(dead_events(db_dsn, "list", "--format", "json").stdout)[0]
    assert event["payload"] == {"n": 0} and event["status"] == "dead"

    empty = dead_events(db_dsn, "list", "--event-type", "nope")
    assert empty.code == 0 and empty.stdout == "" and "no dead events match" in empty.stderr
    assert (
        json.loads(dead_events(db_dsn, "list", "--event-type", "x", "--format", "json").stdout)
        == []
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["list", "--since", "yesterday"], "not an ISO 8601"),
        (["list", "--until", "2024-02-30"], "not an ISO 8601"),
        (["list", "--format", "xml"], "--format must be one of table, json"),
        (["list", "--limit", "ten"], "--limit must be a whole number"),
        (["list", "--limit", "0"], "--limit must be between 1 and 10000"),
        (["list", "--error-fingerprint", "zzz"], "12 lowercase hex digits"),
        (["list", "--event-type", ""], "event_type must not be empty"),
        (
            ["stats", "--by", "status"],
            "--by must be one of event_type, aggregate_type, destination, error",
        ),
        (["stats", "--format", "yaml"], "--format must be one of"),
        (["show", "abc"], "event id must be a positive integer, got 'abc'"),
        (["show", "0"], "event id must be a positive integer"),
        (["retry", "1.5"], "event id must be a positive integer"),
        (["history", "--limit", "x"], "--limit must be a whole number"),
        (["purge", "--older-than-days", "soon"], "--older-than-days must be a whole number"),
        (["purge", "--older-than-days", "-3"], None),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db_dsn: str, args: list[str], needle: str | None) -> None:
    result = dead_events(db_dsn, *args)
    one_line_error(result, 2, *([needle] if needle else []))


def test_database_unreachable_is_one_line_without_password() -> None:
    dsn = "postgresql://app:s3cret@127.0.0.1:1/shop?connect_timeout=2"
    result = dead_events(dsn, "list")
    one_line_error(result, 1, "cannot connect to PostgreSQL")
    assert "s3cret" not in result.stderr


# -- stats, show ----------------------------------------------------------------------------------


def test_stats_by_each_grouping(conn: Conn, db_dsn: str) -> None:
    make_dead(conn, 40, error="KeyError: order {i} not found")
    make_dead(conn, 3, event_type="invoice.issued", aggregate_type="invoice", error=LONG_ERROR)
    table = dead_events(db_dsn, "stats")
    assert table.code == 0, table.stderr
    assert table.stdout.startswith("43 dead events; oldest died ")
    assert "order.created" in table.stdout and "invoice.issued" in table.stdout
    by_error = dead_events(db_dsn, "stats", "--by", "error")
    assert by_error.code == 0
    lines = by_error.stdout.splitlines()
    assert max(len(line) for line in lines) <= 100
    fp = fingerprint("KeyError: order 1 not found")
    assert any(line.startswith(fp) and " 40 " in line for line in lines)
    assert "    KeyError: order <n> not found" in lines
    data = json.loads(dead_events(db_dsn, "stats", "--by", "error", "--format", "json").stdout)
    assert data["by"] == "error" and data["total"] == 43
    top = data["by_error"][0]
    assert (top["fingerprint"], top["count"], top["signature"]) == (
        fp,
        40,
        "KeyError: order <n> not found",
    )
    agg = json.loads(
        dead_events(db_dsn, "stats", "--by", "aggregate_type", "--format", "json").stdout
    )
    assert [(g["key"], g["count"]) for g in agg["by_aggregate_type"]] == [
        ("order", 40),
        ("invoice", 3),
    ]
    filtered = json.loads(
        dead_events(db_dsn, "stats", "--event-type", "invoice.issued", "--format", "json").stdout
    )
    assert filtered["total"] == 3
    empty = dead_events(db_dsn, "stats", "--event-type", "none")
    assert empty.code == 0 and empty.stdout.startswith("0 dead events")


def test_show_event_payload_and_full_error_history(conn: Conn, db_dsn: str) -> None:
    (event_id,) = make_dead(conn, error="KeyError: 'k'", attempts=3, payload={"order": 7})
    shown = dead_events(db_dsn, "show", str(event_id))
    assert shown.code == 0, shown.stderr
    assert "status:            dead" in shown.stdout
    assert '"order": 7' in shown.stdout
    assert "error history (3 failed attempt(s), oldest first):" in shown.stdout
    assert shown.stdout.count("Traceback ...") == 3
    data = json.loads(dead_events(db_dsn, "show", str(event_id), "--format", "json").stdout)
    assert data["payload"] == {"order": 7} and len(data["errors"]) == 3
    one_line_error(dead_events(db_dsn, "show", "987654"), 1, "no event with id 987654")


# -- retry ----------------------------------------------------------------------------------------


def test_retry_one(conn: Conn, db_dsn: str) -> None:
    (event_id,) = make_dead(conn)
    ok = dead_events(db_dsn, "retry", str(event_id))
    assert ok.code == 0, ok.stderr
    assert f"event {event_id} is pending again" in ok.stdout
    row = row_of(conn, event_id)
    assert (row["status"], row["attempts"], row["redrive_count"]) == ("pending", 0, 1)
    assert row["last_redriven_by"] == getpass.getuser()
    # now it is pending: a second retry is refused and changes nothing
    again = dead_events(db_dsn, "retry", str(event_id))
    one_line_error(again, 1, f"event {event_id} is pending, not dead")
    assert row_of(conn, event_id) == row
    one_line_error(dead_events(db_dsn, "retry", "55555"), 1, "no event with id 55555")
    one_line_error(dead_events(db_dsn, "retry", "x1"), 2)
    assert [a["action"] for a in audit_rows(conn)] == ["retry"]


def test_retry_batch_ids_all_or_nothing(conn: Conn, db_dsn: str) -> None:
    dead = make_dead(conn, 3)
    done = make_live(conn, "done")
    mixed = dead_events(db_dsn, "retry-batch", *map(str, dead), str(done), "777777")
    one_line_error(mixed, 1, "no such event: 777777", f"not dead: {done}", "nothing was retried")
    assert status_counts(conn) == {"dead": 3, "done": 1}
    # one id that is not even a number: usage error before anything happens
    one_line_error(dead_events(db_dsn, "retry-batch", str(dead[0]), "abc"), 2, "'abc'")
    assert status_counts(conn) == {"dead": 3, "done": 1}
    assert audit_rows(conn) == []

    dry = dead_events(db_dsn, "retry-batch", *map(str, dead), "777777", "--dry-run")
    assert dry.code == 1 and "would retry 3 dead events" in dry.stdout
    assert "no such event: 777777" in dry.stderr
    assert status_counts(conn) == {"dead": 3, "done": 1}

    skip = dead_events(db_dsn, "retry-batch", *map(str, dead[:2]), str(done), "--skip-invalid")
    assert skip.code == 0, skip.stderr
    assert "retried 2 dead events (1 skipped" in skip.stdout
    ok = dead_events(db_dsn, "retry-batch", str(dead[2]))
    assert ok.code == 0 and "retried 1 dead events" in ok.stdout
    assert status_counts(conn) == {"pending": 3, "done": 1}
    assert [a["affected"] for a in audit_rows(conn)] == [2, 1]

    for args in (
        [],
        ["1", "--all-matching"],
        ["1", "--event-type", "x"],
        ["--all-matching", "--skip-invalid"],
    ):
        one_line_error(dead_events(db_dsn, "retry-batch", *args), 2)


def test_retry_batch_all_matching(conn: Conn, db_dsn: str) -> None:
    targets = make_dead(conn, 6, event_type="order.paid", error="HTTPError: 503 for {i}")
    others = make_dead(conn, 2, event_type="order.created")
    dry = dead_events(
        db_dsn, "retry-batch", "--all-matching", "--event-type", "order.paid", "--dry-run"
    )
    assert dry.code == 0 and "would retry 6 dead events" in dry.stdout
    assert status_counts(conn) == {"dead": 8}
    limited = dead_events(
        db_dsn,
        "retry-batch",
        "--all-matching",
        "--event-type",
        "order.paid",
        "--limit",
        "4",
        "--rate",
        "1000",
    )
    assert limited.code == 0, limited.stderr
    assert "retried 4 dead events" in limited.stdout
    assert "redriven 4 of 4" in limited.stderr
    fp = fingerprint("HTTPError: 503 for 1")
    rest = dead_events(db_dsn, "retry-batch", "--all-matching", "--error-fingerprint", fp)
    assert rest.code == 0 and "retried 2 dead events" in rest.stdout
    assert [row_of(conn, i)["status"] for i in targets] == ["pending"] * 6
    assert [row_of(conn, i)["status"] for i in others] == ["dead"] * 2
    nothing = dead_events(db_dsn, "retry-batch", "--all-matching", "--event-type", "order.paid")
    assert nothing.code == 0 and "nothing retried" in nothing.stdout
    one_line_error(dead_events(db_dsn, "retry-batch", "--all-matching", "--rate", "0"), 2, "--rate")
    one_line_error(
        dead_events(db_dsn, "retry-batch", "--all-matching", "--since", "x"), 2, "ISO 8601"
    )


def test_retry_batch_asks_above_1000_events(conn: Conn, db_dsn: str) -> None:
    bulk_dead(conn, 1001)
    refused = dead_events(db_dsn, "retry-batch", "--all-matching")
    assert refused.code == 1
    assert "Redrive 1,001 dead events to pending?" in refused.stderr
    assert "not confirmed; nothing retried" in refused.stderr
    no = dead_events(db_dsn, "retry-batch", "--all-matching", input="n\n")
    assert no.code == 1
    assert status_counts(conn) == {"dead": 1001}
    yes = dead_events(db_dsn, "retry-batch", "--all-matching", "--limit", "1001", input="y\n")
    assert yes.code == 0 and "retried 1,001 dead events" in yes.stdout
    assert status_counts(conn) == {"pending": 1001}
    bulk_dead(conn, 1200)
    flag = dead_events(db_dsn, "retry-batch", "--all-matching", "--yes")
    assert flag.code == 0 and "retried 1,200 dead events" in flag.stdout
    assert "?" not in flag.stderr


# -- export ---------------------------------------------------------------------------------------


def test_export_formats_to_file_and_stdout(conn: Conn, db_dsn: str, tmp_path: Path) -> None:
    make_dead(conn, 3, error="=1+2")
    make_dead(conn, 2, event_type="other")
    target = tmp_path / "dead.jsonl"
    result = dead_events(db_dsn, "export", "--format", "jsonl", "--output", str(target))
    assert result.code == 0, result.stderr
    assert result.stdout == ""
    assert "exported 5 dead events" in result.stderr
    lines = target.read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["last_error"] == "=1+2"
    assert target.stat().st_mode & 0o077 == 0
    assert list(tmp_path.iterdir()) == [target]

    stdout = dead_events(
        db_dsn, "export", "--format", "json", "--output", "-", "--event-type", "other"
    )
    assert stdout.code == 0
    assert [e["event_type"] for e in json.loads(stdout.stdout)] == ["other", "other"]

    csv_out = dead_events(db_dsn, "export", "--format", "csv", "-o", "-")
    rows = list(csv.DictReader(io.StringIO(csv_out.stdout)))
    assert len(rows) == 5 and rows[0]["last_error"] == "'=1+2"
    assert [a["action"] for a in audit_rows(conn)] == ["export"] * 3
    assert audit_rows(conn)[0]["details"]["destination"] == str(target)


def test_export_bad_output_or_format_changes_nothing(
    conn: Conn, db_dsn: str, tmp_path: Path
) -> None:
    make_dead(conn, 2)
    one_line_error(
        dead_events(db_dsn, "export", "--format", "jsonl", "--output", "/nonexistent/dir/x.jsonl"),
        1,
        "cannot write to /nonexistent/dir/x.jsonl",
    )
    one_line_error(
        dead_events(db_dsn, "export", "--format", "jsonl", "--output", str(tmp_path)),
        1,
        "is a directory",
    )
    one_line_error(
        dead_events(db_dsn, "export", "--format", "xml", "--output", str(tmp_path / "x")),
        2,
        "--format must be one of json, jsonl, csv",
    )
    assert list(tmp_path.iterdir()) == []
    assert audit_rows(conn) == []


def test_export_shows_a_progress_bar_for_large_files(
    conn: Conn, db_dsn: str, tmp_path: Path
) -> None:
    bulk_dead(conn, 10_000)
    target = tmp_path / "dead.csv"
    result = dead_events(db_dsn, "export", "--format", "csv", "--output", str(target))
    assert result.code == 0, result.stderr
    assert "exporting" in result.stderr
    assert len(list(csv.reader(target.open()))) == 10_001


# -- purge, history ------------------------------------------------------------------------------


def test_purge_and_history(conn: Conn, db_dsn: str) -> None:
    old = make_dead(conn, 2)
    conn.execute("UPDATE outbox_event SET dead_at = now() - interval '10 days'")
    conn.commit()
    young = make_dead(conn, 1)
    dry = dead_events(db_dsn, "purge", "--older-than-days", "7", "--dry-run")
    assert dry.code == 0 and "would archive 2 dead events" in dry.stdout
    done = dead_events(db_dsn, "purge", "--older-than-days", "7")
    assert done.code == 0, done.stderr
    assert "moved 2 dead events that died more than 7 days ago to the archive" in done.stdout
    archived = conn.execute("SELECT id FROM outbox_event_archive ORDER BY id").fetchall()
    conn.commit()
    assert [r[0] for r in archived] == old
    assert dead_events(db_dsn, "retry", str(young[0])).code == 0

    history = dead_events(db_dsn, "history")
    assert history.code == 0
    lines = history.stdout.splitlines()
    assert lines[0].split() == ["ID", "WHEN", "(UTC)", "WHO", "ACTION", "AFFECTED", "OUTCOME"]
    assert "retry" in lines[1] and lines[2] == f"    ids {young[0]}"
    assert "purge" in lines[3] and "older_than_days=7" in lines[4]
    assert f"{getpass.getuser()} (postgres)" in lines[1]
    assert max(len(line) for line in lines) <= 100
    data = json.loads(dead_events(db_dsn, "history", "--limit", "1", "--format", "json").stdout)
    assert [(e["action"], e["event_ids"]) for e in data] == [("retry", young)]


def test_purge_one_error_group_leaves_the_others_retryable(conn: Conn, db_dsn: str) -> None:
    # The runbook's "events that will never succeed": purge one fingerprint group, only it.
    old = datetime.now(UTC) - timedelta(days=10)
    doomed = make_dead(conn, 3, error="ValueError: bad payload {i}", dead_at=old)
    others = make_dead(conn, 2, error="HTTPError: 503 for {i}", dead_at=old)
    young = make_dead(conn, 1, error="ValueError: bad payload {i}")
    conn.commit()
    fp = fingerprint("ValueError: bad payload 0")
    group = ("--older-than-days", "7", "--error-fingerprint", fp)
    dry = dead_events(db_dsn, "purge", *group, "--dry-run")
    assert dry.code == 0, dry.stderr
    assert dry.stdout.strip() == "would archive 3 dead events matching the filters (dry run)"
    assert status_counts(conn) == {"dead": 6}
    done = dead_events(db_dsn, "purge", *group)
    assert done.code == 0, done.stderr
    assert "moved 3 dead events matching the filters that died more than 7 days" in done.stdout
    archived = conn.execute("SELECT id FROM outbox_event_archive ORDER BY id").fetchall()
    errors = conn.execute("SELECT count(*) FROM outbox_event_error_archive").fetchone()
    conn.commit()
    assert [r[0] for r in archived] == doomed
    assert errors is not None and errors[0] > 0
    assert dead_events(db_dsn, "retry-batch", *map(str, others + young)).code == 0
    history = json.loads(dead_events(db_dsn, "history", "--format", "json").stdout)
    purge = next(e for e in history if e["action"] == "purge")
    assert purge["filter"] == {"error_fingerprint": fp} and purge["affected"] == 3


def test_purge_filters_are_checked_before_the_database() -> None:
    # Port 1 refuses connections: exit 2 (not 1) shows the filter failed before connecting.
    nowhere = "postgresql://ops@127.0.0.1:1/shop"
    bad = dead_events(nowhere, "purge", "--older-than-days", "7", "--since", "yesterday")
    one_line_error(bad, 2, "since: 'yesterday' is not an ISO 8601 date")


@pytest.mark.slow
def test_retry_batch_interrupted_with_ctrl_c_then_resumed(conn: Conn, db_dsn: str) -> None:
    # 1,000 events at 50 a second: once 100 are back, the interrupt has 18 s to arrive before
    # the redrive could finish on its own, however slow this machine is at the moment.
    bulk_dead(conn, 1000)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPATCHBOX_DSN", "DATABASE_URL")}
    env["DISPATCHBOX_DSN"] = db_dsn
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dispatchbox",
            "dead-events",
            "retry-batch",
            "--all-matching",
            "--rate",
            "50",
            "--yes",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C reaches the command even when the suite itself was started in the background
        # of a non-interactive shell, which starts it with SIGINT ignored (its children inherit
        # that, and Python then installs no KeyboardInterrupt handler).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while status_counts(conn).get("pending", 0) < 100:
        assert time.monotonic() < deadline, "the paced redrive never got going"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted after" in err and "run the same command again" in err
    assert "Traceback" not in err
    first = status_counts(conn)
    assert 100 <= first["pending"] < 1000 and first["pending"] + first["dead"] == 1000
    (audit,) = audit_rows(conn)
    assert (audit["outcome"], audit["affected"]) == ("interrupted", first["pending"])

    again = dead_events(db_dsn, "retry-batch", "--all-matching", "--yes")
    assert again.code == 0, again.stderr
    assert f"retried {first['dead']:,} dead events" in again.stdout
    assert status_counts(conn) == {"pending": 1000}
    redrives = conn.execute("SELECT max(redrive_count) FROM outbox_event").fetchone()
    conn.commit()
    assert redrives == (1,), "an event was redriven twice"
