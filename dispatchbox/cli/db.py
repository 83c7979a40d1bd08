"""`dispatchbox db migrate | check | status`."""

from __future__ import annotations

import typer

from dispatchbox import migrations
from dispatchbox.cli.common import connection, fail, info
from dispatchbox.outbox_status import EXACT_BELOW, outbox_status, status_lines

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
def status(
    ctx: typer.Context,
    exact: bool = typer.Option(
        False,
        "--exact",
        help=f"Count every state exactly, however many events there are (by default a state "
        f"with more than {EXACT_BELOW:,} events shows the planner's estimate, marked ~).",
    ),
) -> None:
    """Applied and pending migrations, and the outbox's health."""
    with connection(ctx) as conn:
        st = migrations.status(conn)
        health = None
        if any(a.version == 1 for a in st.applied):
            health = outbox_status(conn, exact_below=None if exact else EXACT_BELOW)
    for a in st.applied:
        print(f"applied  {a.version:04d}_{a.name}  {a.applied_at.isoformat(timespec='seconds')}")
    for m in st.pending:
        print(f"pending  {m.version:04d}_{m.name}")
    for u in st.unknown:
        info(f"warning: migration {u.version:04d}_{u.name} is applied but unknown to this version")
    if health is not None:
        print()
        print("outbox health")
        print("\n".join(status_lines(health)))
