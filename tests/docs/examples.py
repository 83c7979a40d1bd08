"""The ```console blocks of the docs, parsed into commands and the output the page shows.

A block may be preceded by one directive, an HTML comment the rendered page does not show:

* ``<!-- docs-test: fresh database -->``: run it on a new, empty database (not migrated);
* ``<!-- docs-test: migrated database -->``: run it on a new database with every migration;
* ``<!-- docs-test: no database -->``: run it with no DSN in the environment;
* ``<!-- docs-test: skip: REASON -->``: do not run it, for the reason given.

Without one, a block runs on the page's database, after the page's earlier blocks, so a page
reads (and is tested) top to bottom. Output is compared line by line after masking what differs
from run to run: timestamps and measured numbers with a decimal point.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*(.+?)\s*-->")
TIMESTAMP = re.compile(
    r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:Z|[+-]\d\d:?\d\d)?(?![\d:])"
)
DECIMAL = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")
# Statistics PostgreSQL updates in the background (`db status`'s tuple counts): masked too.
STATISTIC = re.compile(r"^(\s+outbox_(?:dead|live)_tuples\s+)\d+$")


@dataclass
class Command:
    line: str  # the shell command, continuation lines joined
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: Path
    lineno: int
    directive: str | None
    commands: list[Command]

    @property
    def where(self) -> str:
        return f"{self.page.parent.name}/{self.page.name}:{self.lineno}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```console":
            i += 1
            continue
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        match = DIRECTIVE.search(before)
        start = i + 1
        i += 1
        body: list[str] = []
        while lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        out.append(Block(page, start, match.group(1) if match else None, _commands(body)))
    return out


def _commands(body: list[str]) -> list[Command]:
    commands: list[Command] = []
    pending: str | None = None
    for line in body:
        if pending is not None:  # inside a command continued with a backslash
            pending += " " + line.strip().rstrip("\\").strip()
            if not line.endswith("\\"):
                commands.append(Command(pending))
                pending = None
            continue
        if line.startswith("$ "):
            text = line[2:]
            if text.endswith("\\"):
                pending = text.rstrip("\\").strip()
            else:
                commands.append(Command(text))
        elif commands and line.strip():
            commands[-1].output.append(line.rstrip())
    return commands


def mask(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        line = STATISTIC.sub(r"\1<n>", TIMESTAMP.sub("<time>", line))
        out.append(DECIMAL.sub("<n>", line).rstrip())
    return [line for line in out if line]
