"""WorkerConfig: every worker setting, its default, and the checks run before anything starts."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from dispatchbox.dispatcher import BackoffPolicy, Dispatcher
from dispatchbox.errors import ConfigurationError


@dataclass(frozen=True)
class WorkerConfig:
    dsn: str
    app: str  # "module:attribute" naming a Dispatcher
    # Worker processes under one supervisor.
    processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    # Handlers running at once in one process (sync ones in that many threads).
    concurrency: int = 10
    # Events claimed per claim statement.
    batch_size: int = 100
    # How long a claim is valid before the reaper may take the event back, seconds.
    lease_seconds: float = 60.0
    # Default handler timeout, seconds; must be shorter than the lease.
    handler_timeout: float = 30.0
    # Idle poll interval, seconds (NOTIFY usually wakes workers sooner).
    poll_interval: float = 1.0
    # How often each process sweeps expired leases, seconds (<= 0 disables the reaper).
    reaper_interval: float = 5.0
    # Crashes (a lease that expired: the process died or hung while holding the event) after
    # which an event is poison and goes dead; 0 never gives up on crashes. Crashes do not count
    # against max_attempts.
    max_crashes: int = 3
    # Seconds before an event lost to a crash is due again, doubling per crash, with jitter.
    crash_backoff: float = 1.0
    # Default retry backoff (per event type overridable in the Dispatcher).
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    backoff_factor: float = 2.0
    # On SIGTERM, how long in-flight handlers may finish, seconds.
    grace_period: float = 30.0
    # LISTEN for the insert trigger's NOTIFY (off behind PgBouncer in transaction mode).
    listen: bool = True
    # Server-side prepared statements (off behind PgBouncer < 1.21 in transaction mode).
    prepared_statements: bool = True
    # synchronous_commit for the worker's own claims and outcomes; off trades a possible
    # redelivery after a server crash for fewer WAL flush waits.
    synchronous_commit: bool = True
    # How long completions wait to be written together, seconds.
    flush_interval: float = 0.002
    # sys.path entries to add before importing the app (the CLI adds its working directory).
    app_path: tuple[str, ...] = ()
    # A TOML file of routes and destinations added to the app's Dispatcher (--config).
    routes_file: str | None = None
    log_level: str = "INFO"

    def backoff(self) -> BackoffPolicy:
        return BackoffPolicy(
            base=self.backoff_base, factor=self.backoff_factor, cap=self.backoff_max
        )

    def validate(self, dispatcher: Dispatcher | None = None) -> None:
        """Raise ConfigurationError for a setting that cannot work."""
        positive = {
            "processes": self.processes,
            "concurrency": self.concurrency,
            "batch-size": self.batch_size,
            "lease-seconds": self.lease_seconds,
            "handler-timeout": self.handler_timeout,
            "poll-interval": self.poll_interval,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigurationError(f"--{name} must be positive, got {value}")
        if self.grace_period < 0:
            raise ConfigurationError(
                f"--grace-period must not be negative, got {self.grace_period}"
            )
        if self.max_crashes < 0 or self.crash_backoff < 0:
            raise ConfigurationError("--max-crashes and --crash-backoff must not be negative")
        if self.flush_interval < 0:
            raise ConfigurationError(
                f"flush_interval must not be negative, got {self.flush_interval}"
            )
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigurationError(
                "--log-level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, "
                f"got {self.log_level!r}"
            )
        if ":" not in self.app:
            raise ConfigurationError(f"--app must look like module:attribute, got {self.app!r}")
        self.backoff()  # validates the numbers
        if self.handler_timeout >= self.lease_seconds:
            raise ConfigurationError(
                f"--handler-timeout ({self.handler_timeout:g}s) must be shorter than "
                f"--lease-seconds ({self.lease_seconds:g}s), or a slow handler's event would be "
                "taken over while it still runs"
            )
        if dispatcher is not None:
            for target in dispatcher.route_targets().values():
                if target.timeout is not None and target.timeout >= self.lease_seconds:
                    raise ConfigurationError(
                        f"destination {target.name!r} may take {target.timeout:g}s a batch, "
                        f"not shorter than --lease-seconds ({self.lease_seconds:g}s)"
                    )
            for spec in dispatcher.specs():
                if spec.timeout is not None and spec.timeout >= self.lease_seconds:
                    raise ConfigurationError(
                        f"handler {spec.event_type!r} has timeout {spec.timeout:g}s, not shorter "
                        f"than --lease-seconds ({self.lease_seconds:g}s)"
                    )
