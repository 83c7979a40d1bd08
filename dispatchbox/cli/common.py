"""What every CLI command shares: the DSN, connections, one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import psycopg
import typer

from dispatchbox import db


@dataclass
class CliState:
    dsn_flag: str | None = None

    def dsn(self) -> str:
        return db.resolve_dsn(self.dsn_flag)


def state(ctx: typer.Context) -> CliState:
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


@contextmanager
def connection(
    ctx: typer.Context, *, autocommit: bool = False
) -> Iterator[psycopg.Connection[Any]]:
    dsn = state(ctx).dsn()
    conn = db.connect(dsn, autocommit=autocommit)
    try:
        yield conn
        if not autocommit:
            conn.commit()
    finally:
        conn.close()


def fail(message: str, *, code: int = 1) -> NoReturn:
    """One clear line on stderr, then exit non-zero."""
    print(f"dispatchbox: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def usage_error(message: str) -> NoReturn:
    fail(message, code=2)


def info(message: str) -> None:
    """Progress and notes go to stderr, so stdout stays parseable."""
    print(message, file=sys.stderr, flush=True)
