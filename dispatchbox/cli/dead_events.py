"""`dispatchbox dead-events ...`: see, count, analyse, retry, export and purge dead events.

Every verb is a thin client of OutboxRepository. Values arrive as text and are checked here, so
a bad id, date, number or format ends in one line on stderr and exit 2 before the database is
touched. Tables go to stdout and fit a 100-column terminal (wider when the terminal is); notes
and progress go to stderr, so ``--format json`` output on stdout is always parseable.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import typer

from dispatchbox.cli.common import fail, info, state, usage_error
from dispatchbox.errors import EventNotFound
from dispatchbox.export import ExportFormat
from dispatchbox.filters import DeadEventFilter
from dispatchbox.records import AuditEntry, DeadEvent, EventDetail, default_actor
from dispatchbox.redaction import redact_record
from dispatchbox.repository import GROUPINGS, MAX_PAGE, OutboxRepository

app = typer.Typer(
    help="Dead events: list, stats, show, retry, retry-batch, export, purge, history.",
    no_args_is_help=True,
)

# Redriving more than this many events asks for confirmation (unless --yes).
CONFIRM_ABOVE = 1000
# Exports to a file show a progress bar from this many rows.
PROGRESS_ABOVE = 10_000
MIN_WIDTH = 100

# -- options shared by several verbs ------------------------------------------------------------

_EVENT_TYPE = typer.Option(None, "--event-type", metavar="E", help="Only this event type.")
_AGGREGATE_TYPE = typer.Option(
    None, "--aggregate-type", metavar="T", help="Only this aggregate type."
)
_SINCE = typer.Option(
    None, "--since", metavar="ISO", help="Died at or after (ISO 8601; no offset = local time)."
)
_UNTIL = typer.Option(None, "--until", metavar="ISO", help="Died before (ISO 8601).")
_ERROR_CONTAINS = typer.Option(
    None, "--error-contains", metavar="S", help="last_error contains S (case-insensitive)."
)
_FINGERPRINT = typer.Option(
    None,
    "--error-fingerprint",
    metavar="F",
    help="Only this error group (the FINGERPRINT column of `stats --by error`).",
)
_DESTINATION = typer.Option(
    None,
    "--destination",
    metavar="NAME",
    help="Only events whose delivery to this destination failed (a handler's destination=, "
    "a route's destination name).",
)
_FORMAT = typer.Option("table", "--format", metavar="table|json", help="Output format.")


def _repo(ctx: typer.Context) -> OutboxRepository:
    return OutboxRepository(state(ctx).dsn())


def _filter(
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


def _event_id(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        usage_error(f"event id must be a positive integer, got {text!r}")
    if value < 1:
        usage_error(f"event id must be a positive integer, got {text!r}")
    return value


MAX_BIGINT = 2**63 - 1  # PostgreSQL's bigint: larger values are a usage error, not a database one
MAX_DAYS = 1_000_000  # far beyond any retention, small enough for an interval


def _int(flag: str, text: str | None, *, minimum: int, maximum: int | None = None) -> int | None:
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


def _choice(flag: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        usage_error(f"{flag} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _emit_json(value: Any) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


# -- table rendering ----------------------------------------------------------------------------


def _width() -> int:
    if sys.stdout.isatty():
        return max(MIN_WIDTH, shutil.get_terminal_size((MIN_WIDTH, 24)).columns)
    return MIN_WIDTH


def _cut(text: str | None, width: int) -> str:
    """One line, at most width characters, an ellipsis where it was cut."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: max(0, width - 1)] + "…"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


def _table(
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


def _list_table(events: Sequence[DeadEvent]) -> None:
    width = _width()
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
            _when(e.dead_at),
            _cut(e.event_type, type_w),
            _cut(f"{e.aggregate_type}/{e.aggregate_id}", agg_w),
            f"{e.attempts}/{e.max_attempts}",
            _cut(e.last_error, err_w),
        ]
        for e in events
    ]
    _table(["ID", "DEAD AT (UTC)", "EVENT TYPE", "AGGREGATE", "ATT", "ERROR"], rows, right={0})


# -- list, stats, show ----------------------------------------------------------------------------


@app.command("list")
def list_command(
    ctx: typer.Context,
    limit: str = typer.Option("100", "--limit", metavar="N", help=f"At most N (1-{MAX_PAGE})."),
    offset: str = typer.Option("0", "--offset", metavar="N", help="Skip the first N."),
    after_id: str | None = typer.Option(
        None, "--after-id", metavar="ID", help="Keyset page: events with a larger id (fast)."
    ),
    aggregate_type: str | None = _AGGREGATE_TYPE,
    event_type: str | None = _EVENT_TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    error_contains: str | None = _ERROR_CONTAINS,
    error_fingerprint: str | None = _FINGERPRINT,
    destination: str | None = _DESTINATION,
    fmt: str = _FORMAT,
) -> None:
    """Dead events in id order, oldest first; the error is cut to fit the terminal."""
    fmt = _choice("--format", fmt, ("table", "json"))
    page = _int("--limit", limit, minimum=1, maximum=MAX_PAGE)
    skip = _int("--offset", offset, minimum=0, maximum=MAX_BIGINT)
    after = _int("--after-id", after_id, minimum=0, maximum=MAX_BIGINT)
    flt = _filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    repo = _repo(ctx)
    events = repo.fetch_dead_events(limit=page or 100, offset=skip or 0, after_id=after, filter=flt)
    events = [redact_record(e, default_actor()) for e in events]
    if fmt == "json":
        _emit_json([e.to_json() for e in events])
        return
    if not events:
        info("no dead events match")
        return
    _list_table(events)
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
    aggregate_type: str | None = _AGGREGATE_TYPE,
    event_type: str | None = _EVENT_TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    error_contains: str | None = _ERROR_CONTAINS,
    error_fingerprint: str | None = _FINGERPRINT,
    destination: str | None = _DESTINATION,
    fmt: str = _FORMAT,
) -> None:
    """Dead events counted by event type, aggregate type, destination or normalised error."""
    by = _choice("--by", by, GROUPINGS)
    fmt = _choice("--format", fmt, ("table", "json"))
    flt = _filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    result = _repo(ctx).dead_event_stats(filter=flt, by=[by])
    if fmt == "json":
        _emit_json({"by": by, **result.to_json()})
        return
    print(
        f"{result.total:,} dead events; oldest died {_when(result.oldest_dead_at)}, "
        f"newest {_when(result.newest_dead_at)} (UTC)"
    )
    if not result.total:
        return
    print()
    if by == "error":
        width = _width()
        groups = result.by_error or []
        _table(
            ["FINGERPRINT", "COUNT", "FIRST SEEN (UTC)", "LAST SEEN (UTC)", "EXAMPLE ID"],
            [
                [
                    g.fingerprint,
                    f"{g.count:,}",
                    _when(g.first_seen),
                    _when(g.last_seen),
                    str(g.example_id),
                ]
                for g in groups
            ],
            right={1, 4},
            below=[_cut(g.signature or "(no error recorded)", width - 4) for g in groups],
        )
        return
    stat_groups = getattr(result, f"by_{by}") or []
    key_w = min(48, max(len(by), *(len(g.key or "-") for g in stat_groups)))
    _table(
        [by.upper().replace("_", " "), "COUNT", "FIRST SEEN (UTC)", "LAST SEEN (UTC)"],
        [
            [_cut(g.key or "-", key_w), f"{g.count:,}", _when(g.first_seen), _when(g.last_seen)]
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
    fmt: str = _FORMAT,
) -> None:
    """One event (in any state): fields, payload, headers and its full error history."""
    fmt = _choice("--format", fmt, ("table", "json"))
    ident = _event_id(event_id)
    event = _repo(ctx).get_event(ident)
    if event is None:
        raise EventNotFound(f"no event with id {ident}")
    event = redact_record(event, default_actor())
    if fmt == "json":
        _emit_json(event.to_json())
    else:
        _show_text(event)


# -- retry ----------------------------------------------------------------------------------------


@app.command()
def retry(
    ctx: typer.Context, event_id: str = typer.Argument(..., metavar="ID", help="A dead event's id.")
) -> None:
    """Send one dead event back to pending (attempts reset, error history kept)."""
    ident = _event_id(event_id)
    if not _repo(ctx).retry_dead_event(ident, actor=default_actor()):
        raise EventNotFound(f"no event with id {ident}; nothing retried")
    print(f"event {ident} is pending again")


class _Progress:
    """Progress on stderr: rewritten in place on a terminal, a line every few seconds if not."""

    def __init__(self, verb: str, total: int) -> None:
        self.verb = verb
        self.total = total
        self.started = time.monotonic()
        self.last = 0.0
        self.done = 0
        self.tty = sys.stderr.isatty()

    def __call__(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if not self.tty and now - self.last < 5 and done < self.total:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6)
        line = f"{self.verb} {done:,} of {self.total:,} ({rate:,.0f}/s)"
        if self.tty:
            sys.stderr.write("\r" + line)
            sys.stderr.flush()
        else:
            info(line)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


@app.command("retry-batch")
def retry_batch(
    ctx: typer.Context,
    event_ids: list[str] | None = typer.Argument(None, metavar="[ID ...]", show_default=False),
    all_matching: bool = typer.Option(
        False, "--all-matching", help="Redrive every dead event that matches the filters."
    ),
    aggregate_type: str | None = _AGGREGATE_TYPE,
    event_type: str | None = _EVENT_TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    error_contains: str | None = _ERROR_CONTAINS,
    error_fingerprint: str | None = _FINGERPRINT,
    destination: str | None = _DESTINATION,
    limit: str | None = typer.Option(
        None, "--limit", metavar="N", help="With --all-matching: at most N events."
    ),
    rate: str | None = typer.Option(
        None, "--rate", metavar="N", help="With --all-matching: at most N events per second."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be retried; change nothing."
    ),
    yes: bool = typer.Option(
        False, "--yes", "-y", help=f"Do not ask above {CONFIRM_ABOVE:,} events."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="With ids: retry the valid ones, skip missing or not dead."
    ),
    canary: str | None = typer.Option(
        None,
        "--canary",
        metavar="N|P%",
        help="Redrive a sample (N events or P% of them, whole aggregates) first; promote the "
        "rest only if the sample succeeds (see --canary-success). Resumable.",
    ),
    canary_success: str = typer.Option(
        "95%",
        "--canary-success",
        metavar="P%",
        help="With --canary: the share of the sample that must end done (and no new error "
        "group may appear) for the rest to be promoted.",
    ),
    settle_timeout: str = typer.Option(
        "300",
        "--settle-timeout",
        metavar="SECONDS",
        help="With --canary: how long to wait for the sample to end done or dead.",
    ),
    adaptive: bool = typer.Option(
        False,
        "--adaptive",
        help="Pace by what the redriven events do: slow down as their failures or latency "
        "rise, pause while the destination is down; --rate is then the top speed.",
    ),
    max_replays: str | None = typer.Option(
        None,
        "--max-replays",
        metavar="N",
        help="Leave dead the events already redriven N times (stops redrive loops).",
    ),
    resume: str | None = typer.Option(
        None, "--resume", metavar="ID", help="Continue a canary or paced redrive operation."
    ),
    fmt: str = typer.Option(
        "table", "--format", metavar="table|json", help="Output of --dry-run and operations."
    ),
) -> None:
    """Redrive several dead events: the ids given, or --all-matching the filters, in batches."""
    from dispatchbox.cli import redrive as redrive_cli  # flags of dispatchbox.redrive

    fmt = _choice("--format", fmt, ("table", "json"))
    if resume is not None:
        redrive_cli.resume(ctx, _event_id(resume), fmt)
        return
    ids = event_ids or []
    filters = (
        event_type,
        aggregate_type,
        since,
        until,
        error_contains,
        error_fingerprint,
        destination,
    )
    if ids and all_matching:
        usage_error("give event ids or --all-matching with filters, not both")
    if not ids and not all_matching:
        usage_error("give event ids, or --all-matching with filters (see --help)")
    if not all_matching and (any(f is not None for f in filters) or limit or rate):
        usage_error("filters, --limit and --rate need --all-matching")
    if ids and (canary is not None or adaptive or max_replays is not None):
        usage_error("--canary, --adaptive and --max-replays need --all-matching")
    if all_matching and skip_invalid:
        usage_error("--skip-invalid applies to ids, not --all-matching")
    if ids:
        _retry_ids(ctx, [_event_id(i) for i in ids], dry_run=dry_run, skip_invalid=skip_invalid)
        return
    cap = _int("--limit", limit, minimum=1, maximum=MAX_BIGINT)
    per_second = _rate(rate)
    flt = _filter(*filters)
    replays = _int("--max-replays", max_replays, minimum=1, maximum=2**31 - 1)
    if dry_run or canary is not None or adaptive or replays is not None:
        redrive_cli.redrive_filter(
            ctx, flt, limit=cap, rate=per_second, dry_run=dry_run, canary=canary,
            canary_success=canary_success, adaptive=adaptive, max_replays=replays,
            settle_timeout=settle_timeout, fmt=fmt,
        )  # fmt: skip
        return
    repo = _repo(ctx)
    count = repo.count_dead_events(filter=flt)
    todo = count if cap is None else min(count, cap)
    if todo == 0:
        print("no dead events match; nothing retried")
        return
    if (
        todo > CONFIRM_ABOVE
        and not yes
        and not _confirm(f"Redrive {todo:,} dead events to pending?")
    ):
        fail("not confirmed; nothing retried")
    progress = _Progress("redriven", todo)
    try:
        counts = repo.redrive_dead_events(
            flt, cap, actor=default_actor(), rate=per_second, progress=progress
        )
    except KeyboardInterrupt:
        progress.close()
        info(
            f"interrupted after {progress.done:,} events: committed batches stay redriven "
            "(see `dead-events history`); run the same command again to redrive the rest"
        )
        raise typer.Exit(130) from None
    progress.close()
    print(f"retried {counts.processed:,} dead events")
    if counts.skipped or counts.failed:
        # Held by another redrive, or a batch that raised: running the command again picks
        # up whatever is still dead.
        info(
            f"skipped {counts.skipped:,} (held by another transaction or no longer dead), "
            f"failed {counts.failed:,}: run the same command again to retry what is still dead"
        )


def _rate(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        usage_error(f"--rate must be a number of events per second, got {text!r}")
    if not value > 0 or value == float("inf"):
        usage_error(f"--rate must be a positive number of events per second, got {text!r}")
    return value


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        # Nobody to ask: read one answer line if one was piped in, else refuse.
        info(f"{question} [y/N] (pass --yes to skip this question)")
        answer = sys.stdin.readline().strip().lower()
        return answer in ("y", "yes")
    return typer.confirm(question, default=False, err=True)


def _retry_ids(ctx: typer.Context, ids: list[int], *, dry_run: bool, skip_invalid: bool) -> None:
    repo = _repo(ctx)
    if dry_run:
        dead, missing, not_dead = repo.classify_ids(ids)
        print(f"would retry {len(dead):,} dead events (dry run: nothing changed)")
        if missing:
            info(f"no such event: {', '.join(map(str, missing))}")
        if not_dead:
            info(f"not dead: {', '.join(map(str, not_dead))}")
        if (missing or not_dead) and not skip_invalid:
            fail("the batch would fail: some ids are missing or not dead (see above)")
        return
    done = repo.retry_dead_events_batch(ids, actor=default_actor(), skip_invalid=skip_invalid)
    skipped = len(set(ids)) - done
    note = f" ({skipped} skipped: missing or not dead)" if skipped else ""
    print(f"retried {done:,} dead events{note}")


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
    aggregate_type: str | None = _AGGREGATE_TYPE,
    event_type: str | None = _EVENT_TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    error_contains: str | None = _ERROR_CONTAINS,
    error_fingerprint: str | None = _FINGERPRINT,
    destination: str | None = _DESTINATION,
) -> None:
    """Stream matching dead events to a file or stdout (payloads as JSON; CSV formula-safe)."""
    kind = ExportFormat(_choice("--format", fmt, [f.value for f in ExportFormat]))
    flt = _filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    repo = _repo(ctx)
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
    aggregate_type: str | None = _AGGREGATE_TYPE,
    event_type: str | None = _EVENT_TYPE,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    error_contains: str | None = _ERROR_CONTAINS,
    error_fingerprint: str | None = _FINGERPRINT,
    destination: str | None = _DESTINATION,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count only; change nothing."),
) -> None:
    """Move old dead events matching the filters to the archive: they can no longer be retried."""
    days = _int("--older-than-days", older_than_days, minimum=0, maximum=MAX_DAYS)
    assert days is not None
    flt = _filter(
        event_type, aggregate_type, since, until, error_contains, error_fingerprint, destination
    )
    matching = "" if flt.is_empty else " matching the filters"
    repo = _repo(ctx)
    if dry_run:
        count = repo.count_purgeable(days, filter=flt)
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
    fmt: str = _FORMAT,
) -> None:
    """The audit trail: who retried, exported or purged dead events, when, and how many."""
    fmt = _choice("--format", fmt, ("table", "json"))
    n = _int("--limit", limit, minimum=1, maximum=MAX_PAGE)
    entries = _repo(ctx).history(limit=n or 20)
    if fmt == "json":
        _emit_json([e.to_json() for e in entries])
        return
    if not entries:
        info("no audited actions yet")
        return
    # The target (ids, filter) goes on its own line under each entry: it is what an operator
    # reads the history for, and a column would cut it.
    rows = [
        [
            str(e.id),
            _when(e.started_at),
            f"{e.actor} ({e.db_role})",
            e.action,
            f"{e.affected:,}",
            e.outcome,
        ]
        for e in entries
    ]
    _table(
        ["ID", "WHEN (UTC)", "WHO", "ACTION", "AFFECTED", "OUTCOME"],
        rows,
        right={0, 4},
        below=[_cut(_target(e), _width() - 4) for e in entries],
    )


def _target(entry: AuditEntry) -> str:
    """What an action applied to: its ids, its filter, or its settings."""
    if entry.event_ids is not None:
        return "ids " + ",".join(map(str, entry.event_ids)) if entry.event_ids else "no ids"
    if entry.filter is not None:
        return " ".join(f"{k}={v}" for k, v in entry.filter.items()) or "all dead events"
    return " ".join(f"{k}={v}" for k, v in entry.details.items() if v is not None)
