"""The secrets scan itself (tests/secret_scan.py): it finds a planted secret, names it without
printing it, and the session's DSNs really carry the password it looks for."""

from __future__ import annotations

import pytest
from psycopg import conninfo

from tests import secret_scan
from tests.conftest import run_cli


def test_the_scan_finds_a_planted_secret_and_names_only_where(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outputs: list[tuple[str, str]] = [("somewhere", f"oops {secret_scan.DSN_PASSWORD} oops")]
    monkeypatch.setattr(secret_scan, "OUTPUTS", outputs)
    assert secret_scan.leaks() == ["DSN password in somewhere"]


def test_the_suites_dsns_carry_the_password_and_errors_do_not_show_it(db_dsn: str) -> None:
    assert secret_scan.DSN_PASSWORD in db_dsn
    # An unreachable server: the error names host, port and database, never the password.
    bad = conninfo.make_conninfo(db_dsn, port="1")
    result = run_cli("dead-events", "list", dsn=bad)
    assert result.code == 1 and "cannot connect" in result.stderr
    assert secret_scan.DSN_PASSWORD not in result.stderr
