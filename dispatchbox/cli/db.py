"""`dispatchbox db migrate | check | status | grant | rls ... | partition ...`."""

from __future__ import annotations

from typing import Any

import typer

from dispatchbox import migrations, roles
from dispatchbox.cli import partition
from dispatchbox.cli.common import connection, fail, info
from dispatchbox.data import delivery, metrics
from dispatchbox.outbox_status import EXACT_BELOW, outbox_status, status_lines

app = typer.Typer(help="Schema migrations and database status.", no_args_is_help=True)
rls_app = typer.Typer(
    help="Row-level security: limit roles to some aggregate types (opt-in).", no_args_is_help=True
)
app.add_typer(rls_app, name="rls")
app.add_typer(partition.app, name="partition")


@app.command()
def migrate(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be applied."),
    lock_timeout: float = typer.Option(
        migrations.DEFAULT_LOCK_TIMEOUT,
        "--lock-timeout",
        min=0.001,
        help="Seconds a migration waits for a table lock before it fails and is rolled back.",
    ),
) -> None:
    """Apply pending migrations in order, each in its own transaction."""
    with connection(ctx, autocommit=True) as conn:
        result = migrations.migrate(conn, dry_run=dry_run, lock_timeout=lock_timeout)
    verb = "would apply" if dry_run else "applied"
    for m in result:
        print(f"{verb} {m.version:04d}_{m.name}")
    if not result:
        print("schema is current; nothing to apply")
    if not dry_run:
        with connection(ctx) as conn:
            missing = roles.roles_missing(conn)
        if missing:
            info(
                f"note: roles {', '.join(missing)} not created (this user may not create roles); "
                "a DBA runs `dispatchbox db grant`"
            )


@app.command()
def grant(ctx: typer.Context) -> None:
    """Create the dispatchbox roles (NOLOGIN) and grant them their rights; idempotent.

    Prints every statement it runs. For clusters where `db migrate` may not create roles: run
    it as a user with CREATEROLE that owns the tables (or after a DBA created the roles).
    """
    with connection(ctx) as conn:
        migrations.check(conn)
        roles.grant(conn, echo=print)
    print(f"granted: {', '.join(roles.ROLES)}")


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
        health = cleanup = None
        by_destination: list[dict[str, object]] = []
        if any(a.version == 1 for a in st.applied):
            health = outbox_status(conn, exact_below=None if exact else EXACT_BELOW)
        if any(a.version == 7 for a in st.applied):
            by_destination = metrics.dead_by_destination(conn)
        breakers: list[dict[str, Any]] = []
        if any(a.name == "delivery_controls" for a in st.applied):
            breakers = delivery.breaker_list(conn)
        if any(a.version == 10 for a in st.applied):
            cleanup = metrics.cleanup_horizon(conn)
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
    if cleanup is not None:
        print()
        print("cleanup (what holds back vacuum of the outbox)")
        for key, value in cleanup.items():
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


@rls_app.command("enable")
def rls_enable(ctx: typer.Context) -> None:
    """Turn row-level security on: limited roles see only their aggregate types."""
    with connection(ctx) as conn:
        roles.set_rls(conn, enabled=True)
    print(
        "row-level security enabled on outbox_event, outbox_event_archive, outbox_dead_fingerprint"
    )


@rls_app.command("disable")
def rls_disable(ctx: typer.Context) -> None:
    """Turn row-level security off: every role sees what its grants allow."""
    with connection(ctx) as conn:
        roles.set_rls(conn, enabled=False)
    print("row-level security disabled")


@rls_app.command("limit")
def rls_limit(
    ctx: typer.Context,
    role: str = typer.Argument(..., help="The role (login or group) to limit."),
    aggregate_types: list[str] = typer.Argument(..., help="Aggregate types it may see."),
) -> None:
    """Limit a role to these aggregate types (added to any it has)."""
    with connection(ctx) as conn:
        added = roles.scope_add(conn, role, aggregate_types)
    print(f"{role}: {added} aggregate type(s) added")


@rls_app.command("unlimit")
def rls_unlimit(
    ctx: typer.Context,
    role: str = typer.Argument(..., help="The limited role."),
    aggregate_types: list[str] = typer.Argument(..., help="Aggregate types to take away."),
) -> None:
    """Take aggregate types from a role's scope; with none left it sees every row."""
    with connection(ctx) as conn:
        removed = roles.scope_remove(conn, role, aggregate_types)
    print(f"{role}: {removed} aggregate type(s) removed")


@rls_app.command("show")
def rls_show(ctx: typer.Context) -> None:
    """Whether row-level security is on, and every role's scope."""
    with connection(ctx) as conn:
        status_ = roles.rls_status(conn)
        scoped = roles.scopes(conn)
    for table, enabled in status_.items():
        print(f"{table:<26} {'enabled' if enabled else 'disabled'}")
    for row in scoped:
        print(f"{row['role_name']:<26} {row['aggregate_type']}")
