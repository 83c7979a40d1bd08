"""The redrive operations through the real `dispatchbox` CLI and `dispatchbox serve`: dry-run
report, canary with resume, operations, diff; authentication and bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.acceptance.test_api import AUTH, SECRET, Server, error, ok
from tests.conftest import CliResult, run_cli
from tests.integration.test_redrive_operations import dead, settle

Conn = psycopg.Connection[Any]


def cli(dsn: str, *args: str) -> CliResult:
    return run_cli("dead-events", *args, dsn=dsn)


@pytest.fixture
def server(db_dsn: str, tmp_path: Path) -> Iterator[Server]:
    srv = Server(db_dsn, tmp_path / "serve.log")
    try:
        yield srv
    finally:
        assert srv.stop() == 0, srv.log()


def test_dry_run_report_canary_resume_operations_and_diff(conn: Conn, db_dsn: str) -> None:
    ids = dead(conn, [(str(a), 1) for a in range(40)])
    dry = cli(db_dsn, "retry-batch", "--all-matching", "--dry-run", "--rate", "4")
    assert dry.code == 0, dry.stderr
    assert "would retry 40 dead events of 40 aggregates" in dry.stdout
    assert "estimated time at 4/s: 10s" in dry.stdout
    assert (
        "ERROR GROUP" in dry.stdout
        and "order.paid" in dry.stdout
        and "conflicts: none" in dry.stdout
    )
    as_json = json.loads(cli(db_dsn, "retry-batch", "--all-matching", "--dry-run",
                             "--format", "json").stdout)  # fmt: skip
    assert as_json["total"] == 40 and as_json["groups"]["age"] == [
        {"key": "< 1h", "count": 40, "signature": None}
    ]

    # The canary goes out; nobody delivers it within the settle timeout: exit 4, resumable.
    started = cli(db_dsn, "retry-batch", "--all-matching", "--canary", "10%",
                  "--settle-timeout", "0", "--canary-success", "100%")  # fmt: skip
    assert started.code == 4, started.stderr
    assert "resume it with --resume" in started.stderr
    op_id = int(started.stderr.split("redrive operation ")[1].split()[0])
    listed = cli(db_dsn, "operations")
    assert listed.code == 0 and "canary" in listed.stdout
    canary = conn.execute(
        "SELECT canary_ids FROM outbox_redrive_operation WHERE id = %s", (op_id,)
    ).fetchone()
    conn.commit()
    assert canary is not None and len(canary[0]) == 4
    settle(conn, canary[0], "done")
    resumed = cli(db_dsn, "retry-batch", "--resume", str(op_id))
    assert resumed.code == 0, resumed.stderr
    assert "completed, 40 events redriven" in resumed.stdout
    assert "canary passed: 100.0% succeeded" in resumed.stderr
    pending = conn.execute(
        "SELECT count(*) FROM outbox_event WHERE status = 'pending' AND id = ANY(%s)", (ids,)
    ).fetchone()
    conn.commit()
    assert pending == (36,)

    diff = cli(db_dsn, "diff", "--since", "2000-01-01T00:00:00Z", "--format", "json")
    assert diff.code == 0, diff.stderr
    assert [g["change"] for g in json.loads(diff.stdout)] == ["new"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--all-matching", "--canary", "0%"], "--canary"),
        (["--all-matching", "--canary", "5", "--limit", "3"], "--limit"),
        (["1", "--canary", "5"], "need --all-matching"),
        (["--all-matching", "--max-replays", "0"], "--max-replays"),
        (["--all-matching", "--canary", "5", "--canary-success", "150%"], "--canary-success"),
        (["--resume", "99"], "no redrive operation 99"),
    ],
)
def test_bad_redrive_flags_are_one_line(db_dsn: str, args: list[str], needle: str) -> None:
    result = cli(db_dsn, "retry-batch", *args)
    assert result.code in (1, 2), result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_api_plan_operation_run_and_diff(server: Server, conn: Conn, db_dsn: str) -> None:
    dead(conn, [(str(a), 1) for a in range(10)])
    routes = [
        ("POST", "/api/dead-events/redrive-plan", {}),
        ("GET", "/api/redrive-operations", None),
        ("GET", "/api/dead-events/diff?since=2000-01-01", None),
    ]
    for method, path, body in routes:
        assert error(server.client.request(method, path, json=body), 401).startswith("missing")
    plan = ok(server.client.post("/api/dead-events/redrive-plan", json={"rate": 5}, headers=AUTH))
    assert plan["total"] == 10 and plan["estimate_seconds"] == 2
    op = ok(server.client.post("/api/redrive-operations", headers=AUTH,
                               json={"canary": "2", "canary_success": 50}), 201)  # fmt: skip
    assert op["phase"] == "canary" and op["canary_size"] == 2 and op["actor"] == "ops"
    run = ok(server.client.post(f"/api/redrive-operations/{op['id']}/run", json={}, headers=AUTH))
    assert run["phase"] == "canary", "not settled yet: nothing promoted"
    ids = conn.execute("SELECT canary_ids FROM outbox_redrive_operation").fetchone()
    conn.commit()
    assert ids is not None
    settle(conn, ids[0], "done")
    run = ok(server.client.post(f"/api/redrive-operations/{op['id']}/run", json={}, headers=AUTH))
    assert run["phase"] == "completed" and run["redriven"] == 10
    got = ok(server.client.get(f"/api/redrive-operations/{op['id']}", headers=AUTH))
    assert got["verdict"]["passed"] is True
    assert error(server.client.get("/api/redrive-operations/999", headers=AUTH), 404)
    bad = server.client.post("/api/redrive-operations", headers=AUTH, json={"canary": "x%"})
    assert "--canary" in error(bad, 400)
    assert ok(server.client.get("/api/dead-events/diff?since=2000-01-01", headers=AUTH))
    assert SECRET not in server.log()


def test_plain_dry_runs_report_conflicts_in_the_cli_and_the_api(
    server: Server, conn: Conn, db_dsn: str
) -> None:
    first, second = dead(conn, [("x", 2)], error="ConnectionError: refused {a}")
    conn.execute("UPDATE outbox_event SET last_error = 'KeyError: sku' WHERE id = %s", (first,))
    conn.commit()
    text = cli(db_dsn, "retry-batch", "--all-matching", "--error-contains", "refused", "--dry-run")
    assert text.code == 0, text.stderr
    assert (
        f"behind a dead event the selection leaves out (it would overtake it): 1  e.g. {second}"
        in text.stdout
    )
    body = {"filter": {"error_contains": "refused"}, "dry_run": True}
    got = ok(server.client.post("/api/dead-events/retry-batch", json=body, headers=AUTH))
    assert got["would_retry"] == 1 and got["retried"] == 0
    assert got["conflicts"]["behind_dead_event"] == {"count": 1, "ids": [second]}
    assert got["conflicts"]["aggregate_moved_on"]["count"] == 0
