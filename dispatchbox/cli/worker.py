"""`dispatchbox worker --app MODULE:ATTR`: run the supervisor and its worker processes."""

from __future__ import annotations

import logging
import os

import typer

from dispatchbox import migrations
from dispatchbox.cli.common import state
from dispatchbox.db import connect, describe
from dispatchbox.errors import ConfigurationError
from dispatchbox.logging_setup import configure_logging
from dispatchbox.observability import alerting as alerts
from dispatchbox.observability.exporter import MetricsExporter
from dispatchbox.observability.worker_hooks import make_hooks
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.loader import load_dispatcher
from dispatchbox.worker.supervisor import Supervisor


def _on_off(flag: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("on", "off"):
        raise ConfigurationError(f"{flag} must be on or off, got {value!r}")
    return lowered == "on"


def worker_command(
    ctx: typer.Context,
    app: str = typer.Option(..., "--app", help="MODULE:ATTR naming your Dispatcher."),
    config_file: str | None = typer.Option(
        None,
        "--config",
        envvar="DISPATCHBOX_WORKER_CONFIG",
        metavar="FILE",
        help="TOML file of routes and destinations to add to the Dispatcher (secrets come "
        "from the environment variables it names; docs/en/destinations.md).",
    ),
    processes: int = typer.Option(
        os.cpu_count() or 1,
        "--processes",
        envvar="DISPATCHBOX_PROCESSES",
        min=1,
        help="Worker processes (default: number of cores).",
    ),
    concurrency: int = typer.Option(
        10,
        "--concurrency",
        envvar="DISPATCHBOX_CONCURRENCY",
        min=1,
        help="Handlers running at once per process.",
    ),
    batch_size: int = typer.Option(
        100,
        "--batch-size",
        envvar="DISPATCHBOX_BATCH_SIZE",
        min=1,
        help="Events claimed per statement.",
    ),
    lease_seconds: float = typer.Option(
        60.0,
        "--lease-seconds",
        envvar="DISPATCHBOX_LEASE_SECONDS",
        help="Seconds a claim stays valid; a live worker renews it every third of this, so it "
        "only runs out when the process dies or stalls, and then the reaper takes the event "
        "back. Must be longer than --handler-timeout and every handler's own timeout.",
    ),
    handler_timeout: float = typer.Option(
        30.0,
        "--handler-timeout",
        envvar="DISPATCHBOX_HANDLER_TIMEOUT",
        help="Seconds a handler may run before its attempt counts as failed (a handler's own "
        "timeout= overrides it). Must stay below --lease-seconds.",
    ),
    poll_interval: float = typer.Option(
        1.0,
        "--poll-interval",
        envvar="DISPATCHBOX_POLL_INTERVAL",
        help="Seconds an idle process waits before looking for due events again. NOTIFY wakes "
        "it sooner for new events; retries that come due are found by this poll.",
    ),
    reaper_interval: float = typer.Option(
        5.0,
        "--reaper-interval",
        envvar="DISPATCHBOX_REAPER_INTERVAL",
        help="Seconds between sweeps of expired leases; 0 disables.",
    ),
    max_crashes: int = typer.Option(
        3,
        "--max-crashes",
        envvar="DISPATCHBOX_MAX_CRASHES",
        min=0,
        help="An event whose worker died this many times while holding it (os._exit, SIGKILL, "
        "OOM: its lease expired) is poison and goes dead; crashes never count against "
        "max_attempts. 0 never gives up.",
    ),
    crash_backoff: float = typer.Option(
        1.0,
        "--crash-backoff",
        envvar="DISPATCHBOX_CRASH_BACKOFF",
        min=0,
        help="Seconds before an event lost to a crash is due again, doubling per crash, with "
        "jitter (spreads what a dead process held).",
    ),
    backoff_base: float = typer.Option(
        1.0,
        "--backoff-base",
        envvar="DISPATCHBOX_BACKOFF_BASE",
        help="Seconds before the first retry of a failed event; each later retry waits twice "
        "as long, up to --backoff-max, with up to half taken off at random.",
    ),
    backoff_max: float = typer.Option(
        300.0,
        "--backoff-max",
        envvar="DISPATCHBOX_BACKOFF_MAX",
        help="The longest wait between two attempts of one event, seconds.",
    ),
    grace_period: float = typer.Option(
        30.0,
        "--grace-period",
        envvar="DISPATCHBOX_GRACE_PERIOD",
        help="On SIGTERM, seconds running handlers may take to finish; claimed events not yet "
        "started are given back at once. Keep it within your deployment's stop timeout.",
    ),
    no_listen: bool = typer.Option(
        False,
        "--no-listen",
        envvar="DISPATCHBOX_NO_LISTEN",
        help="Poll only, no LISTEN (PgBouncer in transaction mode).",
    ),
    no_prepare: bool = typer.Option(
        False,
        "--no-prepared-statements",
        envvar="DISPATCHBOX_NO_PREPARED_STATEMENTS",
        help="No server-side prepared statements (PgBouncer before 1.21, transaction mode).",
    ),
    synchronous_commit: str = typer.Option(
        "on",
        "--synchronous-commit",
        envvar="DISPATCHBOX_SYNCHRONOUS_COMMIT",
        help="on|off for the worker's own state changes; off is faster, and a server crash "
        "can then only cause a redelivery.",
    ),
    log_level: str = typer.Option(
        "INFO",
        "--log-level",
        envvar="DISPATCHBOX_LOG_LEVEL",
        help="DEBUG, INFO, WARNING, ERROR or CRITICAL.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        envvar="DISPATCHBOX_METRICS_PORT",
        min=1,
        max=65535,
        help="Serve Prometheus metrics of all worker processes on this port (/metrics).",
    ),
    metrics_host: str = typer.Option(
        "0.0.0.0",  # noqa: S104 - Prometheus scrapes from another host
        "--metrics-host",
        envvar="DISPATCHBOX_METRICS_HOST",
        help="Address the metrics endpoint listens on.",
    ),
) -> None:
    """Deliver events: a supervisor and N worker processes, until SIGTERM or Ctrl-C."""
    config = WorkerConfig(
        dsn=state(ctx).dsn(),
        app=app,
        processes=processes,
        concurrency=concurrency,
        batch_size=batch_size,
        lease_seconds=lease_seconds,
        handler_timeout=handler_timeout,
        poll_interval=poll_interval,
        reaper_interval=reaper_interval,
        max_crashes=max_crashes,
        crash_backoff=crash_backoff,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        grace_period=grace_period,
        listen=not no_listen,
        prepared_statements=not no_prepare,
        synchronous_commit=_on_off("--synchronous-commit", synchronous_commit),
        app_path=(os.getcwd(),),
        routes_file=config_file,
        log_level=log_level.upper(),
    )
    config.validate()
    configure_logging(config.log_level)
    exporter = MetricsExporter(config.dsn, port=metrics_port, host=metrics_host)
    exporter.prepare()  # the metrics directory: the worker processes inherit its variable
    # Observability is assembled here and handed down: the worker package imports none of it.
    supervisor = Supervisor(
        config, hook_factory=make_hooks, on_process_exit=exporter.process_exited
    )
    supervisor.fork_initial()
    # Fail fast, in the supervisor, on what would make every worker process fail, while the
    # forked processes wait at their gates.
    try:
        dispatcher = load_dispatcher(config.app, config.app_path, routes_file=config.routes_file)
        config.validate(dispatcher)
        with connect(config.dsn) as conn:
            migrations.check(conn)
        alerting = alerts.check_env()  # a bad alert setting fails here, not in every worker
        exporter.start()
    except BaseException:
        supervisor.abort()
        exporter.close()
        raise
    logger = logging.getLogger("dispatchbox.supervisor")
    logger.info(
        "supervisor_started processes=%d database=%s handlers=%s",
        config.processes,
        describe(config.dsn),
        ",".join(dispatcher.event_types) or "-",
    )
    if alerting:
        logging.getLogger("dispatchbox.alerts").info("%s", alerting)
    try:
        code = supervisor.run()
    finally:
        exporter.close()
    raise typer.Exit(code)
