"""The named queries in sql/queries/*.sql, loaded once, and their execution by cardinality.

Each query sits under a header line ``-- name: some_name :card`` followed by a one-line ``--``
description, where ``:card`` says what the statement returns, as River's sqlc files do:

- ``:one``: at most one row (``fetch_one``, ``fetch_value``; a second row is an error);
- ``:many``: any number of rows (``fetch_all``, ``afetch_all``, ``afetch_tuples``);
- ``:exec``: no rows wanted, only the row count (``execute``, ``aexecute``);
- ``:copy``: a COPY statement, run through ``cursor.copy(copy_statement(name))``.

The loader refuses a header without a marker, and each execution function refuses a query of
another cardinality. A line ``-- include: fragment`` inside a query is replaced at load time by
sql/fragments/<fragment>.sql, so that a clause shared by many queries (the dead-event filter) has
one definition. Parameters are psycopg named placeholders (``%(name)s``).

Only modules of dispatchbox.data import this one (tests/unit/test_data_layer.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from dispatchbox.errors import QueryCardinalityError

Params = Mapping[str, Any] | None
Row = dict[str, Any]

_HEADER = re.compile(r"^--\s*name:(.*)$", re.MULTILINE)
_NAME_AND_CARD = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s+:([a-z]+)\s*$")
_INCLUDE = re.compile(r"^([ \t]*)--\s*include:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class Cardinality(StrEnum):
    """What a named query returns."""

    ONE = "one"
    MANY = "many"
    EXEC = "exec"
    COPY = "copy"


@dataclass(frozen=True, slots=True)
class Query:
    """One named query: its text (as bytes, what psycopg executes without re-encoding) and
    its cardinality."""

    name: str
    text: bytes
    cardinality: Cardinality


def sql_dir() -> Path:
    """The sql/ folder: inside the installed package (wheel) or beside it (checkout)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "sql", package.parent / "sql"):
        if (candidate / "schema.sql").is_file():
            return candidate
    raise FileNotFoundError("dispatchbox's sql/ folder is missing from this installation")


@cache
def fragment(name: str) -> str:
    """A shared clause from sql/fragments/<name>.sql, without its leading comment lines."""
    path = sql_dir() / "fragments" / f"{name}.sql"
    if not path.is_file():
        raise ValueError(f"no SQL fragment named {name!r} in sql/fragments/")
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("--")]
    return "\n".join(body).strip()


def _expand(body: str) -> str:
    def splice(match: re.Match[str]) -> str:
        indent = match.group(1)
        return "\n".join(indent + line for line in fragment(match.group(2)).splitlines())

    return _INCLUDE.sub(splice, body)


def parse_queries(text: str, *, source: str = "<string>") -> dict[str, Query]:
    """Split one queries file into {name: Query}; fragments are spliced in."""
    matches = list(_HEADER.finditer(text))
    out: dict[str, Query] = {}
    for i, match in enumerate(matches):
        header = _NAME_AND_CARD.match(match.group(1))
        if header is None:
            raise ValueError(
                f"{source}: header {match.group(0).strip()!r} needs a name and a cardinality "
                f"marker ({', '.join(':' + c.value for c in Cardinality)})"
            )
        name, marker = header.groups()
        try:
            card = Cardinality(marker)
        except ValueError:
            raise ValueError(f"{source}: query {name!r} has an unknown marker :{marker}") from None
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = _expand(text[match.end() : end].strip())
        if name in out:
            raise ValueError(f"{source}: query {name!r} defined twice")
        if not body:
            raise ValueError(f"{source}: query {name!r} is empty")
        out[name] = Query(name, body.encode(), card)
    return out


def parse(text: str, *, source: str = "<string>") -> dict[str, str]:
    """Split one queries file into {name: statement text}."""
    return {n: q.text.decode() for n, q in parse_queries(text, source=source).items()}


@cache
def all_queries() -> dict[str, Query]:
    """Every named query of every file."""
    out: dict[str, Query] = {}
    for path in sorted((sql_dir() / "queries").glob("*.sql")):
        for name, q in parse_queries(path.read_text(encoding="utf-8"), source=path.name).items():
            if name in out:
                raise ValueError(f"{path.name}: query {name!r} already defined in another file")
            out[name] = q
    return out


def named(name: str) -> Query:
    """One named query."""
    try:
        return all_queries()[name]
    except KeyError:
        raise KeyError(f"no query named {name!r} in sql/queries/") from None


def query(name: str) -> bytes:
    """One named query's text, whatever its cardinality (EXPLAIN in tests and benchmarks)."""
    return named(name).text


def _text(name: str, *allowed: Cardinality) -> bytes:
    q = named(name)
    if q.cardinality not in allowed:
        wanted = " or ".join(":" + c.value for c in allowed)
        raise QueryCardinalityError(
            f"query {name!r} is :{q.cardinality.value}, this call runs {wanted} queries"
        )
    return q.text


def _at_most_one(name: str, rowcount: int) -> None:
    if rowcount > 1:
        raise QueryCardinalityError(f"query {name!r} is :one but returned {rowcount} rows")


def copy_statement(name: str) -> bytes:
    """A ``:copy`` query's text, for ``cursor.copy``."""
    return _text(name, Cardinality.COPY)


# -- synchronous -------------------------------------------------------------------------------


def execute(conn: psycopg.Connection[Any], name: str, params: Params = None) -> int:
    """Run an ``:exec`` statement; return its row count."""
    text = _text(name, Cardinality.EXEC)
    with conn.cursor() as cur:
        cur.execute(text, params)
        return cur.rowcount


def fetch_all(conn: psycopg.Connection[Any], name: str, params: Params = None) -> list[Row]:
    """The rows of a ``:many`` query, as dicts."""
    text = _text(name, Cardinality.MANY)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(text, params)
        return cur.fetchall()


def fetch_one(conn: psycopg.Connection[Any], name: str, params: Params = None) -> Row | None:
    """The row of a ``:one`` query (None when there is none)."""
    text = _text(name, Cardinality.ONE)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(text, params)
        _at_most_one(name, cur.rowcount)
        return cur.fetchone()


def fetch_value(conn: psycopg.Connection[Any], name: str, params: Params = None) -> Any:
    """The first column of a ``:one`` query's row (None when there is no row)."""
    text = _text(name, Cardinality.ONE)
    with conn.cursor() as cur:
        cur.execute(text, params)
        _at_most_one(name, cur.rowcount)
        row = cur.fetchone()
        return None if row is None else row[0]


def execute_script(conn: psycopg.Connection[Any], text: str) -> None:
    """Run a whole SQL file (migrations, schema): several statements, no parameters."""
    with conn.cursor() as cur:
        cur.execute(text.encode())


# -- asynchronous ------------------------------------------------------------------------------


async def aexecute(conn: psycopg.AsyncConnection[Any], name: str, params: Params = None) -> int:
    """Run an ``:exec`` statement; return its row count."""
    text = _text(name, Cardinality.EXEC)
    async with conn.cursor() as cur:
        await cur.execute(text, params)
        return cur.rowcount


async def afetch_all(
    conn: psycopg.AsyncConnection[Any], name: str, params: Params = None
) -> list[Row]:
    """The rows of a ``:many`` query, as dicts."""
    text = _text(name, Cardinality.MANY)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(text, params)
        return await cur.fetchall()


async def afetch_one(
    conn: psycopg.AsyncConnection[Any], name: str, params: Params = None
) -> Row | None:
    """The row of a ``:one`` query (None when there is none)."""
    text = _text(name, Cardinality.ONE)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(text, params)
        _at_most_one(name, cur.rowcount)
        return await cur.fetchone()


async def afetch_tuples(
    conn: psycopg.AsyncConnection[Any], name: str, params: Params = None, *, binary: bool = False
) -> list[tuple[Any, ...]]:
    """Rows of a ``:many`` query as plain tuples: the hot path avoids building a dict per row.
    ``binary`` asks for results in binary format, cheaper to produce and to parse for timestamps
    and numbers."""
    text = _text(name, Cardinality.MANY)
    async with conn.cursor(binary=binary) as cur:
        await cur.execute(text, params)
        return await cur.fetchall()
