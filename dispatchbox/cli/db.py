"""`dispatchbox db migrate | check | status`."""

from __future__ import annotations

from typing import Any

import typer

from dispatchbox import migrations
from dispatchbox.cli.common import connection, fail, info

app = typer.Typer(help="Schema migrations and database status.", no_args_is_help=True)


@app.command()
def migrate(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be applied."),
) -> None:
    """Apply pending migrations in order, each in its own transaction."""
    with connection(ctx, autocommit=True) as conn:
        result = migrations.migrate(conn, dry_run=dry_run)
    verb = "would apply" if dry_run else "applied"
    for m in result:
        print(f"{verb} {m.version:04d}_{m.name}")
    if not result:
        print("schema is current; nothing to apply")


@app.command()
def check(ctx: typer.Context) -> None:
    """Exit 0 when the schema is current, 1 with the missing migrations listed when not."""
    with connection(ctx) as conn:
        st = migrations.status(conn)
    if st.pending:
        for m in st.pending:
            print(f"missing {m.version:04d}_{m.name}")
        fail(f"{len(st.pending)} migration(s) not applied; run `dispatchbox db migrate`")
    print("schema is current")


@app.command()
def status(ctx: typer.Context) -> None:
    """Applied and pending migrations, and the outbox's health."""
    from dispatchbox import queries

    with connection(ctx) as conn:
        st = migrations.status(conn)
        health = None
        by_destination: list[dict[str, object]] = []
        if any(a.version == 1 for a in st.applied):
            health = queries.fetch_one(conn, "health")
        if any(a.version == 7 for a in st.applied):
            by_destination = queries.fetch_all(conn, "metrics_dead_by_destination")
        breakers: list[dict[str, Any]] = []
        if any(a.name == "delivery_controls" for a in st.applied):
            breakers = queries.fetch_all(conn, "breaker_list")
    for a in st.applied:
        print(f"applied  {a.version:04d}_{a.name}  {a.applied_at.isoformat(timespec='seconds')}")
    for m in st.pending:
        print(f"pending  {m.version:04d}_{m.name}")
    for u in st.unknown:
        info(f"warning: migration {u.version:04d}_{u.name} is applied but unknown to this version")
    if health is not None:
        print()
        print("outbox health")
        for key, value in health.items():
            print(f"  {key:<28} {value if value is not None else '-'}")
    if by_destination or breakers:
        _print_destinations(by_destination, breakers)


def _print_destinations(dead: list[dict[str, Any]], breakers: list[dict[str, Any]]) -> None:
    """One line a destination: its breaker's state (its health, as the workers see it) and its
    dead events."""
    dead_by_name = {row["destination"]: row["count"] for row in dead}
    state = {b["destination"]: b for b in breakers}
    print()
    print("destinations (breaker, dead events)")
    for name in sorted(set(state) | {n for n in dead_by_name if n}):
        b = state.get(name)
        health = "no breaker"
        if b is not None:
            health = b["state"]
            if b["state"] != "closed":
                health += f" since {b['changed_at'].isoformat(timespec='seconds')}"
        print(f"  {name:<28} {health:<40} {dead_by_name.get(name, 0)} dead")
    if dead_by_name.get(None):
        print(f"  {'(none recorded)':<28} {'-':<40} {dead_by_name[None]} dead")
