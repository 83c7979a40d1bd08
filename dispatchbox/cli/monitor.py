"""`dispatchbox monitor`: a live terminal view of the outbox (rich), one frame a second.

Rates in and out, pending, running, dead by event type, the oldest pending age, expired leases,
and the circuit breakers once the installation has them. ``--once`` prints a single frame (two
samples ``--interval`` apart, so the rate in is measured) and exits: for scripts and tests.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from dispatchbox import db
from dispatchbox.cli.common import fail, state
from dispatchbox.monitor import Rates, Sample, rates, sample

# Event types listed at most; the rest are summed into one line.
TOP_TYPES = 10


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


def _count(current: Sample, state: str) -> str:
    """A state's count; ~ marks a planner estimate (more than 10,000 events)."""
    value: int = getattr(current, state)
    return f"~{value:,}" if state in current.estimated else f"{value:,}"


def render(current: Sample, speed: Rates, *, where: str) -> Group:
    """One frame as rich renderables (what the tests record)."""
    top = Table.grid(padding=(0, 3))
    for _ in range(6):
        top.add_column(justify="right")
    published = "…" if speed.published is None else f"{speed.published:,.1f}/s"
    top.add_row("in", "out", "pending", "running", "dead", "oldest pending")
    top.add_row(
        f"[bold]{published}[/]",
        f"[bold]{speed.completed:,.1f}/s[/]",
        f"[bold]{_count(current, 'pending')}[/]",
        f"[bold]{_count(current, 'running')}[/]",
        f"[bold red]{current.dead:,}[/]",
        f"[bold]{_age(current.oldest_pending_age_seconds)}[/]",
    )
    dead = Table(title="dead by event type", expand=True, title_justify="left")
    dead.add_column("event type")
    dead.add_column("dead", justify="right")
    for event_type, count in current.dead_by_type[:TOP_TYPES]:
        dead.add_row(event_type, f"{count:,}")
    rest = current.dead_by_type[TOP_TYPES:]
    if rest:
        dead.add_row(f"({len(rest)} more types)", f"{sum(n for _, n in rest):,}")
    if not current.dead_by_type:
        dead.add_row("[dim]none[/]", "0")
    parts: list[Any] = [top, dead]
    if current.breakers is not None:
        breakers = Table(title="circuit breakers", expand=True, title_justify="left")
        breakers.add_column("destination")
        breakers.add_column("state")
        for b in current.breakers:
            colour = "red" if b.state == "open" else "green"
            breakers.add_row(str(b.name), f"[{colour}]{b.state}[/]")
        parts.append(breakers)
    footer = f"expired leases {current.expired_leases:,} · {where} · {time.strftime('%H:%M:%S')}"
    parts.append(f"[dim]{footer}[/]")
    return Group(Panel(Group(*parts), title="dispatchbox monitor", title_align="left"))


def monitor_command(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
    interval: float = typer.Option(
        1.0, "--interval", min=0.2, max=60, help="Seconds between frames (and samples of --once)."
    ),
) -> None:
    """A live view of the outbox: rates in and out, pending, running, dead by type."""
    dsn = state(ctx).dsn()
    where = db.describe(dsn)
    console = Console()
    try:
        with db.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
            previous = sample(conn)
            if once:
                time.sleep(interval)
                current = sample(conn)
                console.print(render(current, rates(previous, current), where=where))
                return
            with Live(
                render(previous, rates(None, previous), where=where),
                console=console,
                refresh_per_second=4,
                screen=False,
            ) as live:
                while True:
                    time.sleep(interval)
                    current = sample(conn)
                    live.update(render(current, rates(previous, current), where=where))
                    previous = current
    except KeyboardInterrupt:
        return
    except psycopg.OperationalError as exc:
        fail(f"lost the database: {db.redact(' '.join(str(exc).split()), dsn)[:200]}")
