"""`dispatchbox breakers list | open NAME | close NAME | reset NAME`: see and steer the circuit
breaker of each destination. Open, close and reset go to the audit trail with the operator's
name (the OS user; `dead-events history` lists them)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import typer

from dispatchbox.cli.common import connection, fail, info, usage_error
from dispatchbox.delivery import admin
from dispatchbox.records import default_actor

app = typer.Typer(
    help="Circuit breakers per destination: list, open, close, reset.", no_args_is_help=True
)

_NAME = typer.Argument(..., metavar="NAME", help="The destination (see `breakers list`).")


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command("list")
def list_command(
    ctx: typer.Context,
    fmt: str = typer.Option("table", "--format", metavar="table|json", help="Output format."),
) -> None:
    """Every destination's breaker: state, failures counted, since when, rate limit."""
    if fmt not in ("table", "json"):
        usage_error(f"--format must be one of table, json, got {fmt!r}")
    with connection(ctx) as conn:
        breakers = admin.list_breakers(conn)
    if fmt == "json":
        json.dump([b.to_json() for b in breakers], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if not breakers:
        info("no breakers yet: a worker creates them for the destinations its app configures")
        return
    print(
        f"{'DESTINATION':<24} {'STATE':<10} {'FAILS':>5} {'OPENED (UTC)':<19} "
        f"{'NEXT PROBE (UTC)':<19} {'RATE/S':>8}  LAST ERROR"
    )
    for b in breakers:
        state = b.state + ("*" if b.manual else "")
        rate = "-" if b.rate_limit is None else f"{b.rate_limit:g}"
        opened = _when(b.opened_at) if b.state != "closed" else "-"
        error = " ".join((b.last_error or "-").split())[:40] if b.state != "closed" else "-"
        print(
            f"{b.destination[:24]:<24} {state:<10} {b.consecutive_failures:>5} {opened:<19} "
            f"{_when(b.open_until):<19} {rate:>8}  {error}"
        )
    if any(b.manual for b in breakers):
        info("* opened by an operator: stays open until `dispatchbox breakers close NAME`")


def _act(ctx: typer.Context, verb: str, name: str) -> None:
    actions = {
        "open": admin.open_breaker,
        "close": admin.close_breaker,
        "reset": admin.reset_breaker,
    }
    with connection(ctx) as conn:
        try:
            actions[verb](conn, name, actor=default_actor())
        except (admin.BreakerNotFound, admin.BreakerStateError) as exc:
            fail(str(exc))
    print(f"breaker {name}: {verb} (recorded in the audit trail)")


@app.command("open")
def open_command(ctx: typer.Context, name: str = _NAME) -> None:
    """Open a breaker by hand: its events stay pending until `breakers close NAME`."""
    _act(ctx, "open", name)


@app.command("close")
def close_command(ctx: typer.Context, name: str = _NAME) -> None:
    """Close an open or half-open breaker (replays the outage's transient deaths when the
    destination has replay_dead_on_recovery)."""
    _act(ctx, "close", name)


@app.command("reset")
def reset_command(ctx: typer.Context, name: str = _NAME) -> None:
    """Close a breaker and forget its counters, growing cool-down and outage (no replay)."""
    _act(ctx, "reset", name)
