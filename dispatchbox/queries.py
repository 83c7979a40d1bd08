"""The named queries in sql/queries/*.sql, loaded once; the only place SQL is executed from.

Each query sits under a header line ``-- name: some_name`` followed by a one-line ``--``
description. Parameters are psycopg named placeholders (``%(name)s``). Files are owned by the
module that uses them (publish.sql, worker.sql, ...) so that a reader finds every statement that
touches the outbox in one folder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

Params = Mapping[str, Any] | None
Row = dict[str, Any]

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package (wheel) or beside it (checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError("dispatchbox's sql/ folder is missing from this installation")


def parse(text: str, *, source: str = "<string>") -> dict[str, str]:
    """Split one queries file into {name: statement}."""
    matches = list(_HEADER.finditer(text))
    out: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[match.end() : end].strip()
        name = match.group(1)
        if name in out:
            raise ValueError(f"{source}: query {name!r} defined twice")
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        out[name] = body
    return out


@cache
def all_queries() -> dict[str, bytes]:
    """Every named query of every file, as bytes (what psycopg executes without re-encoding)."""
    out: dict[str, bytes] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, body in parse(path.read_text(encoding="utf-8"), source=path.name).items():
            if name in out:
                raise ValueError(f"{path.name}: query {name!r} already defined in another file")
            out[name] = body.encode()
    return out


def query(name: str) -> bytes:
    """One named query's text."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries/") from None


# -- synchronous -------------------------------------------------------------------------------


def execute(conn: psycopg.Connection[Any], name: str, params: Params = None) -> int:
    """Run a statement; return its row count."""
    with conn.cursor() as cur:
        cur.execute(query(name), params)
        return cur.rowcount


def fetch_all(conn: psycopg.Connection[Any], name: str, params: Params = None) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query(name), params)
        return cur.fetchall()


def fetch_one(conn: psycopg.Connection[Any], name: str, params: Params = None) -> Row | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query(name), params)
        return cur.fetchone()


def fetch_value(conn: psycopg.Connection[Any], name: str, params: Params = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(query(name), params)
        row = cur.fetchone()
        return None if row is None else row[0]


def execute_script(conn: psycopg.Connection[Any], text: str) -> None:
    """Run a whole SQL file (migrations, schema): several statements, no parameters."""
    with conn.cursor() as cur:
        cur.execute(text.encode())


# -- asynchronous ------------------------------------------------------------------------------


async def aexecute(conn: psycopg.AsyncConnection[Any], name: str, params: Params = None) -> int:
    async with conn.cursor() as cur:
        await cur.execute(query(name), params)
        return cur.rowcount


async def afetch_all(
    conn: psycopg.AsyncConnection[Any], name: str, params: Params = None
) -> list[Row]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()


async def afetch_tuples(
    conn: psycopg.AsyncConnection[Any], name: str, params: Params = None, *, binary: bool = False
) -> list[tuple[Any, ...]]:
    """Rows as plain tuples: the hot path avoids building a dict per row. ``binary`` asks for
    results in binary format, cheaper to produce and to parse for timestamps and numbers."""
    async with conn.cursor(binary=binary) as cur:
        await cur.execute(query(name), params)
        return await cur.fetchall()
