"""`dispatchbox db partition convert | status | maintain`: the partitioned outbox (opt-in)."""

from __future__ import annotations

import typer

from dispatchbox.cli.common import connection
from dispatchbox.maintenance import partitioner

app = typer.Typer(
    help="The partitioned outbox (opt-in): convert, show, create ahead and retire partitions.",
    no_args_is_help=True,
)

_LOCK_TIMEOUT = typer.Option(
    partitioner.DEFAULT_LOCK_TIMEOUT_MS,
    "--lock-timeout-ms",
    min=1,
    help="Milliseconds a step waits for its lock on outbox_event before it backs off and tries "
    "again; the workers' statements wait behind it at most that long.",
)


@app.command()
def convert(
    ctx: typer.Context,
    partition_size: int = typer.Option(
        partitioner.DEFAULT_PARTITION_SIZE,
        "--partition-size",
        min=1000,
        help="Event ids per partition.",
    ),
    headroom: int = typer.Option(
        0,
        "--headroom",
        min=0,
        help="Ids publishers may draw while the conversion runs (0: one partition).",
    ),
    lock_timeout_ms: int = _LOCK_TIMEOUT,
    attempts: int = typer.Option(
        partitioner.DEFAULT_ATTEMPTS, "--attempts", min=1, help="Tries of each locking step."
    ),
) -> None:
    """Turn the populated outbox_event into a partitioned table while workers run."""
    with connection(ctx, autocommit=True) as conn:
        report = partitioner.convert(
            conn,
            partition_size=partition_size,
            headroom=headroom or None,
            lock_timeout_ms=lock_timeout_ms,
            attempts=attempts,
        )
    print(f"outbox_event is partitioned: new events from id {report.first_bound}")
    print(f"  index (concurrently)      {report.index_seconds:.3f} s")
    tries = report.prepare_attempts
    print(f"  prepare                   {report.prepare_seconds:.3f} s ({tries} tries)")
    print(f"  validate bound            {report.validate_seconds:.3f} s (no blocking lock)")
    print(f"  swap (exclusive lock)     {report.swap_seconds:.3f} s ({report.swap_attempts} tries)")
    print(f"  validate foreign keys     {report.finish_seconds:.3f} s")


@app.command()
def status(ctx: typer.Context) -> None:
    """Whether the outbox is partitioned, and its partitions with their id ranges."""
    with connection(ctx, autocommit=True) as conn:
        st = partitioner.status(conn)
        parts = partitioner.partitions(conn) if st["partitioned"] else []
    if not st["partitioned"]:
        phase = st["phase"] or "not started"
        print(f"outbox_event is a single table (conversion: {phase})")
        return
    print(f"outbox_event is partitioned: {st['partition_size']} ids a partition")
    for p in parts:
        print(f"  {p['partition_name']:<28} [{p['lo']}, {p['hi']})")


@app.command()
def maintain(
    ctx: typer.Context,
    retention_days: int = typer.Option(
        7, "--retention-days", min=0, help="Retire partitions whose newest done event is older."
    ),
    spare: int = typer.Option(
        partitioner.DEFAULT_SPARE, "--spare", min=1, help="Empty partitions kept ahead."
    ),
    lock_timeout_ms: int = _LOCK_TIMEOUT,
) -> None:
    """Create partitions ahead of the id sequence and retire old ones (the pg_cron job's work)."""
    with connection(ctx, autocommit=True) as conn:
        run = partitioner.maintain(
            conn, retention_days=retention_days, lock_timeout_ms=lock_timeout_ms, spare=spare
        )
    print(f"partitions: {run.created} created, {run.retired} retired")
