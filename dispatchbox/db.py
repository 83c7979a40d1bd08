"""Connections: where the DSN comes from, how it is shown without secrets, how to connect."""

from __future__ import annotations

import os
import re
from typing import Any

import psycopg
from psycopg import conninfo

from dispatchbox.errors import ConfigurationError, DatabaseUnreachable

DSN_ENV_VARS = ("DISPATCHBOX_DSN", "DATABASE_URL")


def resolve_dsn(flag: str | None = None) -> str:
    """Return the DSN from the flag, then DISPATCHBOX_DSN, then DATABASE_URL."""
    if flag:
        return flag
    for name in DSN_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    raise ConfigurationError(
        "no database configured: pass --dsn or set DISPATCHBOX_DSN (or DATABASE_URL)"
    )


def dsn_parts(dsn: str) -> dict[str, str]:
    """The DSN as a dict, with libpq's defaults filled in for host, port and database."""
    try:
        parts = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text it could not parse, which may be the password
        # (a raw % in a URL password, say), and redact() cannot find a password it cannot parse.
        raise ConfigurationError(
            "invalid DSN: it could not be parsed (check its quoting and %-encoding)"
        ) from None
    out = {k: str(v) for k, v in parts.items() if v is not None}
    out.setdefault("host", os.environ.get("PGHOST", "localhost"))
    out.setdefault("port", os.environ.get("PGPORT", "5432"))
    user = out.get("user") or os.environ.get("PGUSER") or ""
    out.setdefault("dbname", os.environ.get("PGDATABASE", user or "?"))
    return out


def describe(dsn: str) -> str:
    """'host H port P database D': what a user needs to find the server, and nothing secret."""
    parts = dsn_parts(dsn)
    return f"host {parts['host']} port {parts['port']} database {parts['dbname']}"


_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(text: str, dsn: str | None = None) -> str:
    """Remove any password from text: URL userinfo, key=value pairs and the DSN's own password."""
    text = _URL_PASSWORD.sub(r"\1***\3", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    if dsn:
        try:
            password = conninfo.conninfo_to_dict(dsn).get("password")
        except psycopg.ProgrammingError:
            password = None
        if password:
            text = text.replace(str(password), "***")
    return text


def _reason(exc: BaseException, dsn: str) -> str:
    # libpq's message can span lines; the CLI promises one line.
    message = " ".join(str(exc).split())
    return redact(message, dsn)


def connect(dsn: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open a connection, or raise DatabaseUnreachable with one clean line."""
    kwargs.setdefault("connect_timeout", 10)
    dsn_parts(dsn)  # a malformed DSN is a configuration error, not an outage
    try:
        return psycopg.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL at {describe(dsn)}: {_reason(exc, dsn)}"
        ) from None


async def connect_async(
    dsn: str, *, autocommit: bool = True, **kwargs: Any
) -> psycopg.AsyncConnection[Any]:
    """Async twin of connect()."""
    kwargs.setdefault("connect_timeout", 10)
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnreachable(
            f"cannot connect to PostgreSQL at {describe(dsn)}: {_reason(exc, dsn)}"
        ) from None
