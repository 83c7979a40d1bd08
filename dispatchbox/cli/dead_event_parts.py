"""What the `dispatchbox dead-events` verbs share: their filter flags, parsing of values that
arrive as text (a bad one ends in one line on stderr and exit 2 before the database is touched),
JSON output, and tables that fit a 100-column terminal (wider when the terminal is).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import typer

from dispatchbox.cli.common import state, usage_error
from dispatchbox.filters import DeadEventFilter
from dispatchbox.records import DeadEvent
from dispatchbox.repository import OutboxRepository

# Redriving more than this many events asks for confirmation (unless --yes).
CONFIRM_ABOVE = 1000
# Exports to a file show a progress bar from this many rows.
PROGRESS_ABOVE = 10_000
MIN_WIDTH = 100

# -- options shared by several verbs ------------------------------------------------------------

EVENT_TYPE = typer.Option(None, "--event-type", metavar="E", help="Only this event type.")
AGGREGATE_TYPE = typer.Option(
    None, "--aggregate-type", metavar="T", help="Only this aggregate type."
)
SINCE = typer.Option(
    None, "--since", metavar="ISO", help="Died at or after (ISO 8601; no offset = local time)."
)
UNTIL = typer.Option(None, "--until", metavar="ISO", help="Died before (ISO 8601).")
ERROR_CONTAINS = typer.Option(
    None, "--error-contains", metavar="S", help="last_error contains S (case-insensitive)."
)
FINGERPRINT = typer.Option(
    None,
    "--error-fingerprint",
    metavar="F",
    help="Only this error group (the FINGERPRINT column of `stats --by error`).",
)
DESTINATION = typer.Option(
    None,
    "--destination",
    metavar="NAME",
    help="Only events whose delivery to this destination failed (a handler's destination=, "
    "a route's destination name).",
)
FORMAT = typer.Option("table", "--format", metavar="table|json", help="Output format.")


def open_repo(ctx: typer.Context) -> OutboxRepository:
    return OutboxRepository(state(ctx).dsn())


def parse_filter(
    event_type: str | None,
    aggregate_type: str | None,
    since: str | None,
    until: str | None,
    error_contains: str | None,
    error_fingerprint: str | None,
    destination: str | None = None,
) -> DeadEventFilter:
    # InvalidFilter carries exit code 2 and becomes one line in cli.main.run.
    return DeadEventFilter.from_strings(
        destination=destination,
        event_type=event_type,
        aggregate_type=aggregate_type,
        since=since,
        until=until,
        error_contains=error_contains,
        error_fingerprint=error_fingerprint,
    )


def parse_event_id(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        usage_error(f"event id must be a positive integer, got {text!r}")
    if value < 1:
        usage_error(f"event id must be a positive integer, got {text!r}")
    return value


MAX_BIGINT = 2**63 - 1  # PostgreSQL's bigint: larger values are a usage error, not a database one
MAX_DAYS = 1_000_000  # far beyond any retention, small enough for an interval


def parse_int(
    flag: str, text: str | None, *, minimum: int, maximum: int | None = None
) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        usage_error(f"{flag} must be a whole number, got {text!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        usage_error(f"{flag} must be {bound}, got {value}")
    return value


def parse_choice(flag: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        usage_error(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# -- table rendering ----------------------------------------------------------------------------


def terminal_width() -> int:
    if sys.stdout.isatty():
        return max(MIN_WIDTH, shutil.get_terminal_size((MIN_WIDTH, 24)).columns)
    return MIN_WIDTH


def cut(text: str | None, width: int) -> str:
    """One line, at most width characters, an ellipsis where it was cut."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: set[int],
    below: Sequence[str] | None = None,
) -> None:
    """Aligned columns; ``below`` adds an indented line under each row (a long error)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "  ".join(out).rstrip()

    print(line(headers))
    for i, row in enumerate(rows):
        print(line(row))
        if below is not None:
            print("    " + below[i])


def list_table(events: Sequence[DeadEvent]) -> None:
    width = terminal_width()
    ids = [str(e.id) for e in events]
    id_w = max(2, *(len(i) for i in ids))
    type_w = min(24, max(10, *(len(e.event_type) for e in events)))
    agg_w = min(20, max(9, *(len(f"{e.aggregate_type}/{e.aggregate_id}") for e in events)))
    att_w = max(3, *(len(f"{e.attempts}/{e.max_attempts}") for e in events))
    fixed = id_w + 16 + type_w + agg_w + att_w + 2 * 5
    err_w = max(10, width - fixed)
    rows = [
        [
            str(e.id),
            when(e.dead_at),
            cut(e.event_type, type_w),
            cut(f"{e.aggregate_type}/{e.aggregate_id}", agg_w),
            f"{e.attempts}/{e.max_attempts}",
            cut(e.last_error, err_w),
        ]
        for e in events
    ]
    table(["ID", "DEAD AT (UTC)", "EVENT TYPE", "AGGREGATE", "ATT", "ERROR"], rows, right={0})
