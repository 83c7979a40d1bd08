"""Row-level security (opt-in): two operators, each limited to its aggregate types, see, export
and redrive only those dead events; an unlimited role and the workers still see every row."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg

from tests.conftest import run_cli
from tests.pg import PgServer
from tests.security.roles_helpers import login_role
from tests.security.test_roles import make_dead
from tests.worker_helpers import FAST, counts, publish, start, wait_until


def dead_by_type(db_dsn: str) -> dict[str, dict[str, int]]:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT aggregate_type, status, count(*) FROM outbox_event GROUP BY 1, 2"
        ).fetchall()
    out: dict[str, dict[str, int]] = {}
    for aggregate_type, status, n in rows:
        out.setdefault(aggregate_type, {})[status] = n
    return out


def test_two_limited_operators_each_see_export_and_redrive_their_own(
    pg_server: PgServer, db_dsn: str, tmp_path: Path
) -> None:
    for aggregate_type in ("order", "invoice", "shipment"):
        make_dead(db_dsn, 5, aggregate_type)
    with (
        login_role(pg_server, db_dsn, "dispatchbox_operator") as alice,
        login_role(pg_server, db_dsn, "dispatchbox_operator") as bob,
        login_role(pg_server, db_dsn, "dispatchbox_reader") as carol,
    ):
        alice_role = psycopg.conninfo.conninfo_to_dict(alice)["user"]
        bob_role = psycopg.conninfo.conninfo_to_dict(bob)["user"]
        for args in (
            ("db", "rls", "enable"),
            ("db", "rls", "limit", str(alice_role), "order"),
            ("db", "rls", "limit", str(bob_role), "invoice", "shipment"),
        ):
            done = run_cli(*args, dsn=db_dsn)
            assert done.code == 0, done.stderr
        shown = run_cli("db", "rls", "show", dsn=db_dsn)
        assert "outbox_event               enabled" in shown.stdout
        assert f"{bob_role:<26} shipment" in shown.stdout

        def listed(dsn: str) -> list[dict[str, object]]:
            result = run_cli("dead-events", "list", "--format", "json", dsn=dsn)
            assert result.code == 0, result.stderr
            return list(json.loads(result.stdout))

        assert {e["aggregate_type"] for e in listed(alice)} == {"order"}
        assert len(listed(alice)) == 5
        assert {e["aggregate_type"] for e in listed(bob)} == {"invoice", "shipment"}
        assert len(listed(carol)) == 15, "a role with no scope is not limited"

        stats = run_cli("dead-events", "stats", "--by", "aggregate_type", "--format", "json",
                        dsn=alice)  # fmt: skip
        assert stats.code == 0, stats.stderr
        assert "invoice" not in stats.stdout and "order" in stats.stdout

        out = tmp_path / "alice.jsonl"
        exported = run_cli("dead-events", "export", "--format", "jsonl", "--output", str(out),
                           dsn=alice)  # fmt: skip
        assert exported.code == 0, exported.stderr
        assert {json.loads(line)["aggregate_type"] for line in out.read_text().splitlines()} == {
            "order"
        }

        # An id outside the scope is "not found" for her, and stays dead.
        invoice_id = next(e["id"] for e in listed(bob) if e["aggregate_type"] == "invoice")
        refused = run_cli("dead-events", "retry", str(invoice_id), dsn=alice)
        assert refused.code == 1 and f"no event with id {invoice_id}" in refused.stderr

        # The same filter, run by both: each redrives only its own.
        for dsn in (alice, bob):
            redriven = run_cli("dead-events", "retry-batch", "--all-matching", "--event-type",
                               "role.test", "--yes", dsn=dsn)  # fmt: skip
            assert redriven.code == 0, redriven.stderr
            if dsn == alice:
                assert dead_by_type(db_dsn) == {
                    "order": {"pending": 5},
                    "invoice": {"dead": 5},
                    "shipment": {"dead": 5},
                }
        # Plain SQL obeys the same policy.
        with psycopg.connect(alice) as conn:
            seen = conn.execute("SELECT count(*) FROM outbox_event").fetchone()
        assert seen == (5,)
    assert dead_by_type(db_dsn) == {
        "order": {"pending": 5},
        "invoice": {"pending": 5},
        "shipment": {"pending": 5},
    }


def test_workers_are_not_limited_with_rls_on(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    assert run_cli("db", "rls", "enable", dsn=db_dsn).code == 0
    assert run_cli("db", "rls", "limit", "someone_else", "order", dsn=db_dsn).code == 0
    publish(db_dsn, "test.ok", 100)
    with login_role(pg_server, db_dsn, "dispatchbox_worker") as dsn:
        run = start(dsn, record_dir, tmp_path, "--processes", "1", *FAST)
        try:
            wait_until(lambda: counts(db_dsn) == {"done": 100}, 60, "every event done")
        finally:
            assert run.stop() == 0, run.log()[-3000:]
    assert run_cli("db", "rls", "disable", dsn=db_dsn).code == 0
