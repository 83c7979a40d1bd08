"""The execution functions of dispatchbox/data/queries.py check each query's cardinality marker
against a real PostgreSQL: the wrong function is refused before the statement is sent, and a
``:one`` query that returns two rows is an error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from dispatchbox.data import queries
from dispatchbox.errors import QueryCardinalityError


@pytest.mark.parametrize(
    ("function", "name"),
    [
        (queries.fetch_one, "dead_list"),
        (queries.fetch_value, "outbox_notify"),
        (queries.fetch_all, "health"),
        (queries.execute, "dead_list"),
    ],
)
def test_a_query_run_by_a_function_of_another_cardinality_is_refused(
    conn: psycopg.Connection[Any], function: Callable[..., Any], name: str
) -> None:
    with pytest.raises(QueryCardinalityError, match=f"query '{name}' is :"):
        function(conn, name)
    # refused before the statement was sent: the transaction is still usable
    assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(QueryCardinalityError):
        queries.copy_statement("dead_list")


def test_one_returning_two_rows_is_an_error(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    two = queries.Query("two_rows", b"SELECT generate_series(1, 2)", queries.Cardinality.ONE)
    monkeypatch.setitem(queries.all_queries(), "two_rows", two)
    with pytest.raises(QueryCardinalityError, match="'two_rows' is :one but returned 2 rows"):
        queries.fetch_value(conn, "two_rows")
    with pytest.raises(QueryCardinalityError, match="returned 2 rows"):
        queries.fetch_one(conn, "two_rows")
    one = queries.Query("one_row", b"SELECT 7 AS n", queries.Cardinality.ONE)
    monkeypatch.setitem(queries.all_queries(), "one_row", one)
    assert queries.fetch_value(conn, "one_row") == 7
    assert queries.fetch_one(conn, "one_row") == {"n": 7}


def test_async_functions_check_the_marker_too(db_dsn: str) -> None:
    async def run() -> dict[str, Any] | None:
        async with await psycopg.AsyncConnection.connect(db_dsn) as aconn:
            with pytest.raises(QueryCardinalityError):
                await queries.afetch_all(aconn, "health")
            with pytest.raises(QueryCardinalityError):
                await queries.aexecute(aconn, "dead_list")
            return await queries.afetch_one(aconn, "health")

    row = asyncio.run(run())
    assert row is not None and "pending" in row
