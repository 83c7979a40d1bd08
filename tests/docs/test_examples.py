"""The docs' shell examples, run for real: each ```console block's commands go through bash
against a throwaway database and must print what the page shows (tests/docs/examples.py).

Every console block of every page either runs here or carries a skip directive with a reason,
so an example added later is tested or visibly excused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE, _create_db, _drop_db
from tests.docs import examples, names
from tests.pg import PgServer

# Pages whose console blocks run; the others' blocks must each carry a skip directive.
RUN = ("getting-started.md", "configuration.md", "archival.md", "worker.md")
# The application the worker examples name, importable from where the examples run.
MYAPP = Path(__file__).resolve().parent / "myapp"
PAGES = [page for lang in names.LANGUAGES for page in names.doc_pages(lang)]


class Databases:
    """Empty databases on the session's server, dropped at the end of the test."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.names: list[str] = []

    def new(self, *, migrated: bool = False) -> str:
        name = _create_db(self.server, template=TEMPLATE if migrated else "template0")
        self.names.append(name)
        return self.server.dsn(name)

    def drop(self) -> None:
        for name in self.names:
            _drop_db(self.server, name)


@pytest.fixture
def databases(pg_server: PgServer) -> Iterator[Databases]:
    dbs = Databases(pg_server)
    try:
        yield dbs
    finally:
        dbs.drop()


def _env(dsn: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPATCHBOX_DSN", "DATABASE_URL")}
    # The dispatchbox of this interpreter's environment, and output in the order it is written.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    if dsn is not None:
        env["DISPATCHBOX_DSN"] = dsn
    return env


def _run(block: examples.Block, dsn: str | None, cwd: Path) -> None:
    last = 0
    for command in block.commands:
        # `(exit N);` first, so that `echo $?` sees the previous command's exit code.
        proc = subprocess.run(
            ["bash", "-c", f"(exit {last}); {command.line}"],
            cwd=cwd,
            env=_env(dsn),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        last = proc.returncode
        got = examples.mask(proc.stdout.splitlines())
        want = examples.mask(command.output)
        assert got == want, (
            f"{block.where}: `{command.line}` printed\n"
            + "\n".join(proc.stdout.splitlines())
            + "\nbut the page shows\n"
            + "\n".join(command.output)
        )


@pytest.mark.parametrize("page", [p for p in PAGES if p.name in RUN], ids=lambda p: str(p))
def test_console_examples_print_what_the_page_shows(
    page: Path, databases: Databases, tmp_path: Path
) -> None:
    shutil.copytree(MYAPP, tmp_path / "myapp")
    page_dsn: str | None = None
    ran = 0
    for block in examples.blocks(page):
        directive = block.directive or ""
        if directive.startswith("skip:"):
            continue
        if directive == "no database":
            dsn = None
        elif directive == "fresh database":
            dsn = databases.new()
        elif directive == "migrated database":
            dsn = databases.new(migrated=True)
        else:
            assert not directive, f"{block.where}: unknown directive {directive!r}"
            page_dsn = page_dsn or databases.new()
            dsn = page_dsn
        _run(block, dsn, tmp_path)
        ran += 1
    assert ran, f"{page}: no console block ran"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p))
def test_every_console_block_runs_or_says_why_not(page: Path) -> None:
    for block in examples.blocks(page):
        assert block.commands, f"{block.where}: a console block without a `$ ` command"
        if page.name not in RUN:
            assert (block.directive or "").startswith("skip: "), (
                f"{block.where}: console block on a page whose examples do not run, "
                "and no `<!-- docs-test: skip: REASON -->` before it"
            )


def test_the_parser_reads_commands_continuations_and_outputs() -> None:
    page = names.DOCS / "en" / "getting-started.md"
    publish = next(b for b in examples.blocks(page) if "publish" in b.commands[0].line)
    first = publish.commands[0]
    assert first.line.startswith("dispatchbox publish --aggregate-type order")
    assert first.line.endswith('--payload \'{"order_id": 42, "total": "99.90"}\'')
    assert first.output == ["1"]
    assert examples.mask(["applied  0001_initial  2026-11-22T17:44:03+00:00", "  x   1.25"]) == [
        "applied  0001_initial  <time>",
        "  x   <n>",
    ]
