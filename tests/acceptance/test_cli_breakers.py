"""`dispatchbox breakers list | open | close | reset` and `db status`, as a subprocess."""

from __future__ import annotations

import json
import re

import psycopg

from dispatchbox.data import queries
from tests.conftest import run_cli


def _breaker(dsn: str, name: str = "ledger") -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queries.execute(
            conn,
            "breaker_ensure",
            {
                "destination": name,
                "failure_threshold": 5,
                "failure_rate": 0.5,
                "rate_window_seconds": 60,
                "min_calls": 20,
                "cooldown_seconds": 30,
                "max_cooldown_seconds": 600,
                "health_check": True,
                "replay_dead": False,
            },
        )


def test_list_open_close_reset_and_their_audit(db_dsn: str) -> None:
    empty = run_cli("breakers", "list", dsn=db_dsn)
    assert empty.code == 0 and "no breakers yet" in empty.stderr
    _breaker(db_dsn)
    listed = run_cli("breakers", "list", dsn=db_dsn)
    assert listed.code == 0 and "ledger" in listed.stdout and "closed" in listed.stdout
    opened = run_cli("breakers", "open", "ledger", dsn=db_dsn)
    assert opened.code == 0, opened.stderr
    as_json = json.loads(run_cli("breakers", "list", "--format", "json", dsn=db_dsn).stdout)
    assert as_json[0]["state"] == "open" and as_json[0]["manual"] is True
    status = run_cli("db", "status", dsn=db_dsn)
    assert "destinations (breaker, dead events)" in status.stdout
    assert re.search(r"ledger\s+open since \S+\s+0 dead", status.stdout), status.stdout
    assert "open since" in status.stdout
    assert run_cli("breakers", "close", "ledger", dsn=db_dsn).code == 0
    assert run_cli("breakers", "reset", "ledger", dsn=db_dsn).code == 0
    history = run_cli("dead-events", "history", "--format", "json", dsn=db_dsn)
    actions = [e["action"] for e in json.loads(history.stdout)]
    assert actions == ["breaker_reset", "breaker_close", "breaker_open"]


def test_wrong_states_and_unknown_names_are_one_line_and_exit_1(db_dsn: str) -> None:
    _breaker(db_dsn)
    closed = run_cli("breakers", "close", "ledger", dsn=db_dsn)
    assert closed.code == 1
    assert closed.stderr.strip() == "dispatchbox: error: breaker 'ledger' is already closed"
    run_cli("breakers", "open", "ledger", dsn=db_dsn)
    again = run_cli("breakers", "open", "ledger", dsn=db_dsn)
    assert again.code == 1 and "already open" in again.stderr
    unknown = run_cli("breakers", "open", "nope", dsn=db_dsn)
    assert unknown.code == 1 and "no breaker for destination 'nope'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    bad = run_cli("breakers", "list", "--format", "xml", dsn=db_dsn)
    assert bad.code == 2
    with psycopg.connect(db_dsn) as conn:
        (n,) = conn.execute("SELECT count(*) FROM outbox_dead_letter_audit").fetchone() or (0,)
    assert n == 1  # only the one open that happened
