"""`dispatchbox dead-events ...`: see, count, analyse, retry, export and purge dead events.

Every verb is a thin client of OutboxRepository. Values arrive as text and are checked here, so
a bad id, date, number or format ends in one line on stderr and exit 2 before the database is
touched. Tables go to stdout and fit a 100-column terminal (wider when the terminal is); notes
and progress go to stderr, so ``--format json`` output on stdout is always parseable.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import typer

from dispatchbox.cli import dead_event_retry
from dispatchbox.cli.common import fail, info
from dispatchbox.cli.dead_event_parts import (
    AGGREGATE_TYPE,
    DESTINATION,
    ERROR_CONTAINS,
    EVENT_TYPE,
    FINGERPRINT,
    FORMAT,
    MAX_BIGINT,
    MAX_DAYS,
    PROGRESS_ABOVE,
    SINCE,
    UNTIL,
    cut,
    emit_json,
    list_table,
    open_repo,
    parse_choice,
    parse_event_id,
    parse_filter,
    parse_int,
    table,
    terminal_width,
    when,
)
from dispatchbox.errors import EventNotFound
from dispatchbox.export import ExportFormat
from dispatchbox.records import AuditEntry, EventDetail, default_actor
from dispatchbox.redaction import redact_record
from dispatchbox.repository import GROUPINGS, MAX_PAGE

app = typer.Typer(
    help="Dead events: list, stats, show, retry, retry-batch, export, purge, history.",
    no_args_is_help=True,
)

# -- list, stats, show ----------------------------------------------------------------------------


@app.command("list")
def list_command(
    ctx: typer.Context,
    limit: str = typer.Option("100", "--limit", metavar="N", help=f"At most N (1-{MAX_PAGE})."),
    offset: str = typer.Option("0", "--offset", metavar="N", help="Skip the first N."),
    after_id: str | None = typer.Option(
        None, "--after-id", metavar="ID", help="Keyset page: events with a larger id (fast)."
    ),
    aggregate_type: str | None = AGGREGATE_TYPE,
    event_type: str | None = EVENT_TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    error_contains: str | None = ERROR_CONTAINS,
    error_fingerprint: str | None = FINGERPRINT,
    destination: str | None = DESTINATION,
    fmt: str = FORMAT,
) -> None:
    """Dead events in id order, oldest first; the error is cut to fit the terminal."""
    fmt = parse_choice("--format", fmt, ("table", "json"))
    page = parse_int("--limit", limit, minimum=1, maximum=MAX_PAGE)
    skip = parse_int("--offset", offset, minimum=0, maximum=MAX_BIGINT)
    after = parse_int("--after-id", after_id, minimum=0, maximum=MAX_BIGINT)
    flt = parse_filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    repo = open_repo(ctx)
    events = repo.fetch_dead_events(limit=page or 100, offset=skip or 0, after_id=after, filter=flt)
    events = [redact_record(e, default_actor()) for e in events]
    if fmt == "json":
        emit_json([e.to_json() for e in events])
        return
    if not events:
        info("no dead events match")
        return
    list_table(events)
    total = repo.count_dead_events(filter=flt)
    more = f"; next page: --after-id {events[-1].id}" if len(events) == page else ""
    info(f"{len(events)} shown of {total:,} matching dead events{more}")


@app.command()
def stats(
    ctx: typer.Context,
    by: str = typer.Option(
        "event_type",
        "--by",
        metavar="event_type|aggregate_type|destination|error",
        help="Group by.",
    ),
    aggregate_type: str | None = AGGREGATE_TYPE,
    event_type: str | None = EVENT_TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    error_contains: str | None = ERROR_CONTAINS,
    error_fingerprint: str | None = FINGERPRINT,
    destination: str | None = DESTINATION,
    fmt: str = FORMAT,
) -> None:
    """Dead events counted by event type, aggregate type, destination or normalised error."""
    by = parse_choice("--by", by, GROUPINGS)
    fmt = parse_choice("--format", fmt, ("table", "json"))
    flt = parse_filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    result = open_repo(ctx).dead_event_stats(filter=flt, by=[by])
    if fmt == "json":
        emit_json({"by": by, **result.to_json()})
        return
    print(
        f"{result.total:,} dead events; oldest died {when(result.oldest_dead_at)}, "
        f"newest {when(result.newest_dead_at)} (UTC)"
    )
    if not result.total:
        return
    print()
    if by == "error":
        width = terminal_width()
        groups = result.by_error or []
        table(
            ["FINGERPRINT", "COUNT", "FIRST SEEN (UTC)", "LAST SEEN (UTC)", "EXAMPLE ID"],
            [
                [
                    g.fingerprint,
                    f"{g.count:,}",
                    when(g.first_seen),
                    when(g.last_seen),
                    str(g.example_id),
                ]
                for g in groups
            ],
            right={1, 4},
            below=[cut(g.signature or "(no error recorded)", width - 4) for g in groups],
        )
        return
    stat_groups = getattr(result, f"by_{by}") or []
    key_w = min(48, max(len(by), *(len(g.key or "-") for g in stat_groups)))
    table(
        [by.upper().replace("_", " "), "COUNT", "FIRST SEEN (UTC)", "LAST SEEN (UTC)"],
        [
            [cut(g.key or "-", key_w), f"{g.count:,}", when(g.first_seen), when(g.last_seen)]
            for g in stat_groups
        ],
        right={1},
    )


def _show_text(event: EventDetail) -> None:
    fields = [
        ("id", event.id),
        ("status", event.status),
        ("event type", event.event_type),
        ("aggregate", f"{event.aggregate_type}/{event.aggregate_id}"),
        ("attempts", f"{event.attempts} of {event.max_attempts}"),
        ("priority", event.priority),
        ("idempotency key", event.idempotency_key or "-"),
        ("created at", _iso(event.created_at)),
        ("next attempt at", _iso(event.next_attempt_at)),
        ("dead at", _iso(event.dead_at)),
        ("done at", _iso(event.done_at)),
        ("last error at", _iso(event.last_error_at)),
        ("error fingerprint", event.error_fingerprint or "-"),
        ("destination", event.destination or "-"),
        ("redriven", f"{event.redrive_count} time(s)"),
        ("last redriven", f"{_iso(event.last_redriven_at)} by {event.last_redriven_by}")
        if event.last_redriven_at
        else ("last redriven", "-"),
    ]
    for name, value in fields:
        print(f"{name + ':':<19}{value}")
    print("last error:")
    print(_indent(event.last_error or "-"))
    print("headers:")
    print(_indent(json.dumps(event.headers, indent=2, ensure_ascii=False)))
    print("payload:")
    print(_indent(json.dumps(event.payload, indent=2, ensure_ascii=False)))
    print(f"error history ({len(event.errors)} failed attempt(s), oldest first):")
    for err in event.errors:
        print(f"  - attempt {err.attempt} at {_iso(err.finished_at)} on {err.worker or '?'}")
        print(_indent(f"{err.error_type}: {err.message}", 4))
        if err.traceback:
            print(_indent(err.traceback.rstrip(), 6))


def _iso(value: datetime | None) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds") if value else "-"


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + line for line in text.splitlines() or [""])


@app.command()
def show(
    ctx: typer.Context,
    event_id: str = typer.Argument(..., metavar="ID", help="The event's id."),
    fmt: str = FORMAT,
) -> None:
    """One event (in any state): fields, payload, headers and its full error history."""
    fmt = parse_choice("--format", fmt, ("table", "json"))
    ident = parse_event_id(event_id)
    event = open_repo(ctx).get_event(ident)
    if event is None:
        raise EventNotFound(f"no event with id {ident}")
    event = redact_record(event, default_actor())
    if fmt == "json":
        emit_json(event.to_json())
    else:
        _show_text(event)


# -- retry ----------------------------------------------------------------------------------------


# Registered here, between show and export, so that --help lists the verbs in this order.
app.command()(dead_event_retry.retry)
app.command("retry-batch")(dead_event_retry.retry_batch)


# -- export, purge, history -----------------------------------------------------------------------


@contextmanager
def _output(target: str) -> Iterator[TextIO]:
    """stdout for '-'; otherwise a temporary file beside the target, renamed over it only when
    the export succeeded, so a failed export leaves no half-written file behind."""
    if target == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(target)
    directory = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        fail(f"cannot write to {target}: it is a directory")
    if path.exists() and not os.access(path, os.W_OK):
        fail(f"cannot write to {target}: permission denied")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=directory)
    except OSError as exc:
        fail(f"cannot write to {target}: {exc.strerror or exc}")
    ok = False
    try:
        # mkstemp's 0600: an export holds payloads, readable by its owner only.
        with open(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, path)
        ok = True
    finally:
        if not ok:
            with suppress(OSError):
                os.unlink(tmp)


@app.command()
def export(
    ctx: typer.Context,
    fmt: str = typer.Option(..., "--format", metavar="json|jsonl|csv", help="Output format."),
    output: str = typer.Option(
        ..., "--output", "-o", metavar="FILE|-", help="File, or - for stdout."
    ),
    aggregate_type: str | None = AGGREGATE_TYPE,
    event_type: str | None = EVENT_TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    error_contains: str | None = ERROR_CONTAINS,
    error_fingerprint: str | None = FINGERPRINT,
    destination: str | None = DESTINATION,
) -> None:
    """Stream matching dead events to a file or stdout (payloads as JSON; CSV formula-safe)."""
    kind = ExportFormat(parse_choice("--format", fmt, [f.value for f in ExportFormat]))
    flt = parse_filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    repo = open_repo(ctx)
    to_file = output != "-"
    # The output is opened first: an unwritable path fails before the database is asked anything.
    with _output(output) as out:
        total = repo.count_dead_events(filter=flt) if to_file else 0
        if to_file and total >= PROGRESS_ABOVE:
            with typer.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
                seen = [0]

                def advance(done: int) -> None:
                    bar.update(done - seen[0])
                    seen[0] = done

                count = repo.export_dead_events(
                    out, kind, flt, actor=default_actor(), destination=output, progress=advance
                )
        else:
            count = repo.export_dead_events(
                out, kind, flt, actor=default_actor(), destination=output
            )
    if to_file:
        info(f"exported {count:,} dead events to {output}")


@app.command()
def purge(
    ctx: typer.Context,
    older_than_days: str = typer.Option(
        ..., "--older-than-days", metavar="N", help="Dead events that died more than N days ago."
    ),
    aggregate_type: str | None = AGGREGATE_TYPE,
    event_type: str | None = EVENT_TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    error_contains: str | None = ERROR_CONTAINS,
    error_fingerprint: str | None = FINGERPRINT,
    destination: str | None = DESTINATION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count only; change nothing."),
) -> None:
    """Move old dead events matching the filters to the archive: they can no longer be retried."""
    days = parse_int("--older-than-days", older_than_days, minimum=0, maximum=MAX_DAYS)
    assert days is not None
    flt = parse_filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    matching = "" if flt.is_empty else " matching the filters"
    repo = open_repo(ctx)
    if dry_run:
        count = repo.count_archivable(days, filter=flt)
        print(f"would archive {count:,} dead events{matching} (dry run)")
        return
    moved = repo.cleanup_old_dead_events(days, filter=flt, actor=default_actor())
    print(
        f"moved {moved:,} dead events{matching} that died more than {days} days ago to the archive"
    )


@app.command()
def history(
    ctx: typer.Context,
    limit: str = typer.Option("20", "--limit", metavar="N", help="The last N actions."),
    fmt: str = FORMAT,
) -> None:
    """The audit trail: who retried, exported or purged dead events, when, and how many."""
    fmt = parse_choice("--format", fmt, ("table", "json"))
    n = parse_int("--limit", limit, minimum=1, maximum=MAX_PAGE)
    entries = open_repo(ctx).history(limit=n or 20)
    if fmt == "json":
        emit_json([e.to_json() for e in entries])
        return
    if not entries:
        info("no audited actions yet")
        return
    # The target (ids, filter) goes on its own line under each entry: it is what an operator
    # reads the history for, and a column would cut it.
    rows = [
        [
            str(e.id),
            when(e.started_at),
            f"{e.actor} ({e.db_role})",
            e.action,
            f"{e.affected:,}",
            e.outcome,
        ]
        for e in entries
    ]
    table(
        ["ID", "WHEN (UTC)", "WHO", "ACTION", "AFFECTED", "OUTCOME"],
        rows,
        right={0, 4},
        below=[cut(_target(e), terminal_width() - 4) for e in entries],
    )


def _target(entry: AuditEntry) -> str:
    """What an action applied to: its ids, its filter, or its settings."""
    if entry.event_ids is not None:
        return "ids " + ",".join(map(str, entry.event_ids)) if entry.event_ids else "no ids"
    if entry.filter is not None:
        return " ".join(f"{k}={v}" for k, v in entry.filter.items()) or "all dead events"
    return " ".join(f"{k}={v}" for k, v in entry.details.items() if v is not None)
