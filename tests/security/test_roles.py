"""The three roles, proved by logging in as a login role granted each one: what it can do, what
PostgreSQL refuses it, and a real `dispatchbox worker` running under dispatchbox_worker alone."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from dispatchbox import roles
from dispatchbox.data import dead_letters
from tests.conftest import run_cli
from tests.pg import PgServer
from tests.security.roles_helpers import denied, login_role
from tests.worker_helpers import FAST, counts, publish, records, start, wait_until


def make_dead(dsn: str, n: int, aggregate_type: str = "order") -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, status, "
            "attempts, max_attempts, last_error, last_error_at, dead_at) "
            "SELECT %s, g::text, 'role.test', '{\"n\": 1}', 'dead', 5, 5, 'KeyError: x', now(), "
            "now() - interval '40 days' FROM generate_series(1, %s) g",
            [aggregate_type, n],
        )


def test_migrate_created_the_roles_nologin(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'dispatchbox_%%' "
            "ORDER BY 1"
        ).fetchall()
    assert rows == [(r, False) for r in sorted(roles.ROLES)]


def test_db_grant_prints_what_it_does_and_is_idempotent(db_dsn: str) -> None:
    first = run_cli("db", "grant", dsn=db_dsn)
    second = run_cli("db", "grant", dsn=db_dsn)
    assert first.code == 0 and second.code == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout  # nothing created the second time, same grants
    assert "GRANT SELECT, UPDATE ON outbox_event TO dispatchbox_worker;" in first.stdout
    assert first.stdout.count("GRANT ") == len(roles.grant_statements())


def test_worker_role_claims_and_completes_but_cannot_delete_or_read_the_audit(
    pg_server: PgServer, db_dsn: str
) -> None:
    publish(db_dsn, "role.test", 3)
    make_dead(db_dsn, 1)
    with login_role(pg_server, db_dsn, "dispatchbox_worker") as dsn:
        with psycopg.connect(dsn) as conn:
            claimed = conn.execute(
                "UPDATE outbox_event SET status = 'running', lease_token = gen_random_uuid(), "
                "locked_until = now() + interval '1 minute', attempts = attempts + 1 "
                "WHERE status = 'pending' RETURNING id"
            ).fetchall()
            conn.execute(
                "INSERT INTO outbox_event_error (event_id, attempt, error_type, message) "
                "VALUES (%s, 1, 'X', 'y')",
                [claimed[0][0]],
            )
        assert len(claimed) == 3
        assert denied(dsn, "DELETE FROM outbox_event")
        assert denied(dsn, "SELECT * FROM outbox_dead_letter_audit")
        assert denied(dsn, "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type) "
                           "VALUES ('a', 'b', 'c')")  # fmt: skip
        assert denied(dsn, "SELECT * FROM outbox_event_archive")
        assert denied(dsn, "DELETE FROM outbox_event_error")
        assert denied(dsn, "TRUNCATE outbox_event")
        assert denied(dsn, "SELECT archive_outbox_events(0)")  # archival moves rows: operator's
        assert denied(dsn, "CREATE TABLE public.intruder (id int)")
        # A breaker's replay on recovery runs in the worker: it redrives dead events, which
        # leave the fingerprint mirror (and with it the dead-letter summary) as they go.
        with psycopg.connect(dsn) as conn:
            dead = conn.execute("SELECT id FROM outbox_event WHERE status = 'dead'").fetchall()
            replayed = dead_letters.redrive_ids(conn, [dead[0][0]], actor="breaker:erp")
        assert replayed == {dead[0][0]}


def test_a_real_worker_runs_under_dispatchbox_worker_alone(
    pg_server: PgServer, db_dsn: str, record_dir: Path, tmp_path: Path
) -> None:
    ok = publish(db_dsn, "test.ok", 200)
    failing = publish(db_dsn, "test.always_fail", 5, max_attempts=2)
    with login_role(pg_server, db_dsn, "dispatchbox_worker") as dsn:
        run = start(dsn, record_dir, tmp_path, "--processes", "2", *FAST)
        try:
            wait_until(lambda: counts(db_dsn) == {"done": 200, "dead": 5}, 60, "all final")
            with psycopg.connect(db_dsn) as conn:
                who = conn.execute(
                    "SELECT DISTINCT usename FROM pg_stat_activity "
                    "WHERE application_name LIKE 'dispatchbox-worker-%%'"
                ).fetchall()
        finally:
            assert run.stop() == 0, run.log()[-3000:]
    assert who == [(dsn.split("user=")[1].split()[0],)], "the workers logged in as the role"
    assert {r[1] for r in records(record_dir)} == set(ok) | set(failing)
    log = run.log()
    assert "permission denied" not in log and "InsufficientPrivilege" not in log, log[-3000:]


def test_operator_reads_redrives_exports_and_purges(
    pg_server: PgServer, db_dsn: str, tmp_path: Path
) -> None:
    make_dead(db_dsn, 10)
    with login_role(pg_server, db_dsn, "dispatchbox_operator") as dsn:
        listed = run_cli("dead-events", "list", "--format", "json", dsn=dsn)
        assert listed.code == 0, listed.stderr
        assert len(json.loads(listed.stdout)) == 10
        out = tmp_path / "dead.jsonl"
        exported = run_cli("dead-events", "export", "--format", "jsonl", "--output", str(out),
                           dsn=dsn)  # fmt: skip
        assert exported.code == 0, exported.stderr
        assert len(out.read_text().splitlines()) == 10
        ids = [str(e["id"]) for e in json.loads(listed.stdout)]
        retried = run_cli("dead-events", "retry-batch", *ids[:4], dsn=dsn)
        assert retried.code == 0, retried.stderr
        purged = run_cli("dead-events", "purge", "--older-than-days", "30", dsn=dsn)
        assert purged.code == 0, purged.stderr
        archived = run_cli("archive", "run", "--retention-days", "0", dsn=dsn)
        assert archived.code == 0, archived.stderr
        history = run_cli("dead-events", "history", dsn=dsn)
        assert history.code == 0, history.stderr
        assert denied(dsn, "DELETE FROM outbox_dead_letter_audit")
        assert denied(dsn, "TRUNCATE outbox_event")
        assert denied(dsn, "DROP TABLE outbox_event")
        assert denied(dsn, "INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type) "
                           "VALUES ('a', 'b', 'c')")  # fmt: skip
    with psycopg.connect(db_dsn) as conn:
        left = dict(conn.execute("SELECT status, count(*) FROM outbox_event GROUP BY 1").fetchall())
        actions = {r[0] for r in conn.execute("SELECT action FROM outbox_dead_letter_audit")}
    assert left == {"pending": 4}, "4 redriven, the 6 still dead purged"
    assert {"export", "retry_batch", "purge"} <= actions


def test_reader_reads_and_nothing_else(pg_server: PgServer, db_dsn: str) -> None:
    make_dead(db_dsn, 3)
    with login_role(pg_server, db_dsn, "dispatchbox_reader") as dsn:
        listed = run_cli("dead-events", "list", "--format", "json", dsn=dsn)
        assert listed.code == 0, listed.stderr
        stats = run_cli("dead-events", "stats", "--format", "json", dsn=dsn)
        assert stats.code == 0, stats.stderr
        ids = [str(e["id"]) for e in json.loads(listed.stdout)]
        refused = run_cli("dead-events", "retry", ids[0], dsn=dsn)
        assert refused.code == 1
        assert refused.stderr.count("\n") == 1 and "permission denied" in refused.stderr
        for statement in (
            "UPDATE outbox_event SET priority = 1",
            "DELETE FROM outbox_event",
            "INSERT INTO outbox_dead_letter_audit (actor, action) VALUES ('me', 'retry')",
            "UPDATE outbox_alert_state SET active = true",
        ):
            assert denied(dsn, statement), statement
    assert counts(db_dsn) == {"dead": 3}


@pytest.mark.parametrize("role", roles.ROLES)
def test_no_role_may_write_the_schema_version(pg_server: PgServer, db_dsn: str, role: str) -> None:
    with login_role(pg_server, db_dsn, role) as dsn:
        assert denied(dsn, "DELETE FROM dispatchbox_schema_version")
        assert denied(dsn, "UPDATE dispatchbox_role_scope SET aggregate_type = 'x'")
