"""`dispatchbox dead-events retry` and `retry-batch`: one dead event, the ids given, or every dead
event matching the filters, in batches, with a dry run, a confirmation above CONFIRM_ABOVE
events, a rate and progress. Ids and dry runs go through dispatchbox.retry_batch, the path the
HTTP API takes too; canary, adaptive and resumable redrives through cli/redrive.py.
"""

from __future__ import annotations

import sys
import time

import typer

from dispatchbox import retry_batch as retry_batch_path
from dispatchbox.cli.common import fail, info, usage_error
from dispatchbox.cli.dead_event_parts import (
    AGGREGATE_TYPE,
    CONFIRM_ABOVE,
    DESTINATION,
    ERROR_CONTAINS,
    EVENT_TYPE,
    FINGERPRINT,
    MAX_BIGINT,
    SINCE,
    UNTIL,
    open_repo,
    parse_choice,
    parse_event_id,
    parse_filter,
    parse_int,
)
from dispatchbox.errors import EventNotFound
from dispatchbox.records import default_actor


def retry(
    ctx: typer.Context, event_id: str = typer.Argument(..., metavar="ID", help="A dead event's id.")
) -> None:
    """Send one dead event back to pending (attempts reset, error history kept)."""
    ident = parse_event_id(event_id)
    if not open_repo(ctx).retry_dead_event(ident, actor=default_actor()):
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


def retry_batch(
    ctx: typer.Context,
    event_ids: list[str] | None = typer.Argument(None, metavar="[ID ...]", show_default=False),
    all_matching: bool = typer.Option(
        False, "--all-matching", help="Redrive every dead event that matches the filters."
    ),
    aggregate_type: str | None = AGGREGATE_TYPE,
    event_type: str | None = EVENT_TYPE,
    since: str | None = SINCE,
    until: str | None = UNTIL,
    error_contains: str | None = ERROR_CONTAINS,
    error_fingerprint: str | None = FINGERPRINT,
    destination: str | None = DESTINATION,
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

    fmt = parse_choice("--format", fmt, ("table", "json"))
    if resume is not None:
        redrive_cli.resume(ctx, parse_event_id(resume), fmt)
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
        _retry_ids(
            ctx, [parse_event_id(i) for i in ids], dry_run=dry_run, skip_invalid=skip_invalid
        )
        return
    cap = parse_int("--limit", limit, minimum=1, maximum=MAX_BIGINT)
    per_second = _rate(rate)
    flt = parse_filter(*filters)
    replays = parse_int("--max-replays", max_replays, minimum=1, maximum=2**31 - 1)
    if dry_run or canary is not None or adaptive or replays is not None:
        redrive_cli.redrive_filter(
            ctx, flt, limit=cap, rate=per_second, dry_run=dry_run, canary=canary,
            canary_success=canary_success, adaptive=adaptive, max_replays=replays,
            settle_timeout=settle_timeout, fmt=fmt,
        )  # fmt: skip
        return
    repo = open_repo(ctx)
    todo = retry_batch_path.would_retry_matching(repo, flt, cap)
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
    result = retry_batch_path.retry_ids(
        open_repo(ctx), ids, actor=default_actor(), dry_run=dry_run, skip_invalid=skip_invalid
    )
    if dry_run:
        print(f"would retry {result.would_retry or 0:,} dead events (dry run: nothing changed)")
        if result.missing:
            info(f"no such event: {', '.join(map(str, result.missing))}")
        if result.not_dead:
            info(f"not dead: {', '.join(map(str, result.not_dead))}")
        if result.invalid and not skip_invalid:
            fail("the batch would fail: some ids are missing or not dead (see above)")
        return
    skipped = len(set(ids)) - result.retried
    note = f" ({skipped} skipped: missing or not dead)" if skipped else ""
    print(f"retried {result.retried:,} dead events{note}")
