"""`dead-events retry-batch --canary/--adaptive/--resume/--max-replays`, its dry-run report,
`dead-events operations` and `dead-events diff`: the CLI side of dispatchbox.redrive.

Registered on the dead-events app (cli.main imports this module); cli/dead_events.py hands
retry-batch over to ``redrive_filter`` when one of these flags is given.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import typer

from dispatchbox.cli.common import fail, info, usage_error
from dispatchbox.cli.dead_event_parts import emit_json, open_repo, table, when
from dispatchbox.cli.dead_events import app
from dispatchbox.filters import DeadEventFilter, parse_timestamp
from dispatchbox.records import default_actor
from dispatchbox.redrive import RedriveOperation, RedrivePlan, parse_canary
from dispatchbox.redrive.diff import classify_groups

# The report lists at most this many rows per grouping.
REPORT_ROWS = 10


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def print_plan(plan: RedrivePlan) -> None:
    """The dry-run report, on stdout."""
    print(
        f"would retry {plan.total:,} dead events of {plan.aggregates:,} aggregates "
        f"(dry run: nothing changed); oldest died {when(plan.oldest_dead_at)}, "
        f"newest {when(plan.newest_dead_at)} (UTC)"
    )
    if plan.over_replays:
        print(f"left dead by --max-replays: {plan.over_replays:,} (redriven that often already)")
    if plan.estimate_seconds is not None and plan.rate:
        print(f"estimated time at {plan.rate:g}/s: {_duration(plan.estimate_seconds)}")
    titles = {
        "fingerprint": "ERROR GROUP",
        "event_type": "EVENT TYPE",
        "destination": "DESTINATION",
        "age": "DIED",
    }
    for dimension, groups in plan.groups.items():
        print()
        rows = [[g.key, f"{g.count:,}", g.signature or ""] for g in groups[:REPORT_ROWS]]
        table([titles[dimension], "COUNT", ""], rows, right={1})
        if len(groups) > REPORT_ROWS:
            print(f"... and {len(groups) - REPORT_ROWS} more")
    print()
    if not plan.moved_on and not plan.key_taken and not plan.behind:
        print("conflicts: none")
        return
    print("conflicts (redriving these may replay what is superseded, or out of order):")
    if plan.moved_on:
        ids = ", ".join(map(str, plan.moved_on_ids))
        print(f"  aggregate moved on (a newer event of it is done): {plan.moved_on:,}  e.g. {ids}")
    if plan.key_taken:
        ids = ", ".join(map(str, plan.key_taken_ids))
        print(f"  idempotency key held by a newer event: {plan.key_taken:,}  e.g. {ids}")
    if plan.behind:
        ids = ", ".join(map(str, plan.behind_ids))
        print(
            "  behind a dead event the selection leaves out (it would overtake it): "
            f"{plan.behind:,}  e.g. {ids}"
        )


class _Reporter:
    """Progress lines on stderr: each new message at once, repeats at most every 5 s."""

    def __init__(self) -> None:
        self.last = ""
        self.at = 0.0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        same_kind = line.split(" ")[:2] == self.last.split(" ")[:2]
        if same_kind and now - self.at < 5:
            return
        self.last, self.at = line, now
        info(line)


def _operation_text(op: RedriveOperation) -> str:
    text = f"operation {op.id} ({op.mode}): {op.phase}, {op.redriven:,} events redriven"
    return text + (f"; {op.reason}" if op.reason else "")


def redrive_filter(
    ctx: typer.Context,
    flt: DeadEventFilter,
    *,
    limit: int | None,
    rate: float | None,
    dry_run: bool,
    canary: str | None,
    canary_success: str,
    adaptive: bool,
    max_replays: int | None,
    settle_timeout: str,
    fmt: str,
) -> None:
    """retry-batch --all-matching with the redrive flags (or any --dry-run of it)."""
    try:
        success = float(canary_success.rstrip("%"))
        settle = float(settle_timeout)
    except ValueError:
        usage_error("--canary-success must be a percentage and --settle-timeout seconds")
    if not 0 <= success <= 100 or settle < 0:
        usage_error("--canary-success must be 0-100% and --settle-timeout at least 0")
    size = parse_canary(canary) if canary is not None else None
    if limit is not None and (size is not None or adaptive):
        usage_error("--limit does not combine with --canary or --adaptive")
    service = open_repo(ctx).redrive()
    if dry_run:
        plan = service.plan(flt, max_replays=max_replays, rate=rate, limit=limit)
        if fmt == "json":
            emit_json(plan.to_json())
        else:
            print_plan(plan)
        return
    op = service.start(
        flt,
        actor=default_actor(),
        canary=size,
        canary_success=success,
        max_replays=max_replays,
        rate=rate,
        adaptive=adaptive,
        settle_timeout=settle,
    )
    info(f"redrive operation {op.id} started (resume it with --resume {op.id})")
    _drive(service, op.id, fmt)


def resume(ctx: typer.Context, op_id: int, fmt: str) -> None:
    service = open_repo(ctx).redrive()
    if service.get(op_id) is None:
        fail(f"no redrive operation {op_id}")
    _drive(service, op_id, fmt)


def _drive(service: Any, op_id: int, fmt: str) -> None:
    try:
        op = service.run(op_id, report=_Reporter())
    except KeyboardInterrupt:
        info(f"interrupted: committed batches stay redriven; resume with --resume {op_id}")
        raise typer.Exit(130) from None
    if fmt == "json":
        emit_json(op.to_json())
    else:
        print(_operation_text(op))
    if op.phase == "stopped":
        raise typer.Exit(3)
    if op.phase != "completed":
        raise typer.Exit(4)


@app.command()
def operations(
    ctx: typer.Context,
    op_id: str | None = typer.Argument(None, metavar="[ID]", help="Show one operation."),
    limit: int = typer.Option(20, "--limit", min=1, max=1000, help="How many, newest first."),
    fmt: str = typer.Option("table", "--format", metavar="table|json", help="Output format."),
) -> None:
    """Canary and paced redrives (retry-batch --canary/--adaptive): phase, counts, verdict."""
    service = open_repo(ctx).redrive()
    if op_id is not None:
        try:
            ident = int(op_id)
        except ValueError:
            usage_error(f"operation id must be a positive integer, got {op_id!r}")
        op = service.get(ident)
        if op is None:
            fail(f"no redrive operation {ident}")
        found = [op]
    else:
        found = service.operations(limit)
    if fmt == "json":
        emit_json([o.to_json() for o in found])
        return
    if not found:
        print("no redrive operations")
        return
    table(
        ["ID", "STARTED (UTC)", "MODE", "PHASE", "REDRIVEN", "ACTOR", "REASON"],
        [
            [
                str(o.id),
                when(o.created_at),
                o.mode,
                o.phase,
                f"{o.redriven:,}",
                o.actor,
                o.reason or "",
            ]
            for o in found
        ],
        right={0, 4},
    )


@app.command()
def diff(
    ctx: typer.Context,
    since: str = typer.Option(
        ..., "--since", metavar="ISO", help="The moment to compare with, e.g. a deploy (ISO 8601)."
    ),
    lookback: float = typer.Option(
        7 * 86400.0,
        "--lookback",
        metavar="SECONDS",
        help="Groups seen this long before --since and dead no more count as resolved.",
    ),
    fmt: str = typer.Option("table", "--format", metavar="table|json", help="Output format."),
) -> None:
    """Error groups since a deploy: new, growing, quiet (nothing new) or resolved."""
    moment = parse_timestamp("--since", since)
    if moment > datetime.now(UTC) + timedelta(minutes=5):
        usage_error("--since is in the future")
    groups = classify_groups(open_repo(ctx).connection, moment, lookback=lookback)
    if fmt == "json":
        emit_json([g.to_json() for g in groups])
        return
    if not groups:
        print(f"no error groups around {when(moment)} (UTC)")
        return
    table(
        ["CHANGE", "FINGERPRINT", "BEFORE", "SINCE", "FIRST SEEN (UTC)", "ERROR"],
        [
            [
                g.change,
                g.fingerprint,
                f"{g.before:,}",
                f"{g.since:,}",
                when(g.first_seen_at),
                (g.signature or "")[:60],
            ]
            for g in groups
        ],
        right={2, 3},
    )
    sys.stdout.flush()
