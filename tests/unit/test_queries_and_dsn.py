"""Named-query parsing and secret redaction (no database)."""

from __future__ import annotations

import pytest

from dispatchbox import db
from dispatchbox.data import queries
from dispatchbox.errors import ConfigurationError


def test_every_query_file_parses_and_names_are_unique() -> None:
    found = queries.all_queries()
    assert "publish_many" in found and "health" in found
    assert all(q.text.strip() for q in found.values())


def test_parse_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- name: a :one\nSELECT 1\n-- name: a :one\nSELECT 2\n")


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://alice:s3cr3t@db.example:5432/app",
        "host=db.example password=s3cr3t dbname=app",
        "host=db.example password='s3cr3t' dbname=app",
    ],
)
def test_redact_hides_passwords(text: str) -> None:
    assert "s3cr3t" not in db.redact(text)


def test_describe_names_host_port_database_only() -> None:
    text = db.describe("postgresql://alice:s3cr3t@db.example:6543/app")
    assert text == "host db.example port 6543 database app"


def test_resolve_dsn_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCHBOX_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ConfigurationError):
        db.resolve_dsn(None)
    monkeypatch.setenv("DATABASE_URL", "dbname=from_url")
    assert db.resolve_dsn(None) == "dbname=from_url"
    monkeypatch.setenv("DISPATCHBOX_DSN", "dbname=from_env")
    assert db.resolve_dsn(None) == "dbname=from_env"
    assert db.resolve_dsn("dbname=flag") == "dbname=flag"


@pytest.mark.parametrize(
    "dsn", ["postgresql://bob:s3cr%zzet@localhost/db", "host=x password=s3cr3t def"]
)
def test_an_unparsable_dsn_never_shows_its_password(dsn: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        db.dsn_parts(dsn)
    assert "s3cr" not in str(caught.value) and "invalid DSN" in str(caught.value)
