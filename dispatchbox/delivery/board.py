"""DeliveryBoard: what one worker process does with its destinations' breakers and rate limits.

The worker asks it, at each step of its loop, for as little as possible:

- claim: the event types the ordinary claim must leave alone (destinations whose breaker is not
  closed, and rate-limited ones, which are claimed by ``claim_extra`` against their token bucket,
  and the half-open probe event);
- flush: ``record`` adds the flush's outcomes per destination with one statement, and returns
  the breakers that changed state;
- every ``REFRESH`` seconds, ``refresh`` reads the breakers' states (a breaker another process
  opened stops this one too), takes due probes and replays.

A destination without ``Dispatcher.destination()`` configuration costs nothing: when no
destination is configured the worker does not create a board at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from dispatchbox.data import delivery as data
from dispatchbox.delivery.config import DestinationConfig
from dispatchbox.dispatcher import Dispatcher, HandlerSpec
from dispatchbox.errors import PermanentError

logger = logging.getLogger("dispatchbox.delivery")

AsyncConn = psycopg.AsyncConnection[Any]

# Seconds between two reads of the breakers' states by one process: how long another process's
# breaker change takes to reach this one (a flush that changes a state is seen at once).
REFRESH = 0.5
# A rate-limited destination's next claim comes this soon after one that emptied its bucket,
# rather than after the poll interval.
RATE_POLL_MIN = 0.02
RATE_POLL_MAX = 0.25
MAX_ERROR = 500  # characters of the last error kept on the breaker


class DestinationPaused(Exception):
    """Raised in place of a handler call: the destination's breaker is not closed, or this
    process just saw it fail its threshold's worth of times in a row. The event is given back
    (pending again, the attempt not spent)."""


@dataclass(frozen=True, slots=True)
class Change:
    """A breaker that changed state (from a flush, a probe or a refresh)."""

    destination: str
    old_state: str
    state: str


class DeliveryBoard:
    """One per worker process; every method runs on the process's event loop."""

    def __init__(self, dispatcher: Dispatcher, *, worker: str, probe_lease: float) -> None:
        self.worker = worker
        self.probe_lease = probe_lease
        self.configs = {c.name: c for c in dispatcher.destinations()}
        self.types: dict[str, list[str]] = {name: [] for name in self.configs}
        for spec in dispatcher.specs():
            if spec.destination in self.types:
                self.types[spec.destination].append(spec.event_type)
        self.dest_of = {t: name for name, types in self.types.items() for t in types}
        self.breakers = [n for n, c in self.configs.items() if c.breaker is not None]
        self.rated = [n for n, c in self.configs.items() if c.rate_limit is not None]
        self.state = dict.fromkeys(self.configs, "closed")
        # Half-open probes this process holds and still has to send one event for.
        self.probe_wanted: set[str] = set()
        # Half-open probes by event this process holds: their event is not given back.
        self.probing: set[str] = set()
        # Destinations whose handlers must not start now (read by handler threads: only ever
        # changed in place, by single set operations). A process that sees a destination fail
        # `failures` times in a row stops at once ("tripped"), before the shared breaker says
        # so: its local queue would otherwise spend attempts for the milliseconds until its
        # next flush comes back. The shared state then confirms (open) or clears it (closed).
        self.blocked: set[str] = set()
        self.tripped: set[str] = set()
        self._streak: dict[str, int] = {}
        self._dirty = False
        self._excluded: list[str] = []
        self.paused_types: frozenset[str] = frozenset()
        self._rebuild()

    # -- set-up ----------------------------------------------------------------------------------

    async def ensure(self, conn: AsyncConn) -> None:
        """Write this app's policies into the shared rows (a deploy may change them)."""
        for name in self.breakers:
            cfg = self.configs[name]
            policy = cfg.breaker
            assert policy is not None
            await data.breaker_ensure(
                conn,
                {
                    "destination": name,
                    "failure_threshold": policy.failures,
                    "failure_rate": policy.failure_rate,
                    "rate_window_seconds": policy.window,
                    "min_calls": policy.min_calls,
                    "cooldown_seconds": policy.cooldown,
                    "max_cooldown_seconds": policy.max_cooldown,
                    "health_check": cfg.health_check is not None,
                    "replay_dead": cfg.replay_dead_on_recovery,
                },
            )
        for name in self.rated:
            cfg = self.configs[name]
            await data.rate_limit_ensure(conn, name, cfg.rate_limit, cfg.bucket_size)
        unlimited = [n for n in self.configs if n not in self.rated]
        if unlimited:
            await data.rate_limit_drop(conn, unlimited)

    # -- the claim ---------------------------------------------------------------------------------

    def excluded(self) -> list[str]:
        """Event types worker_claim must not claim."""
        if self._dirty:  # a handler thread tripped a destination
            self._rebuild()
        return self._excluded

    def _rebuild(self) -> None:
        self._dirty = False
        stopped = {n for n, s in self.state.items() if s != "closed"} | self.tripped
        out = {t for n in self.rated for t in self.types[n]}
        out |= {t for n in stopped for t in self.types[n]}
        self._excluded = sorted(out)
        blocked = stopped - self.probing
        self.paused_types = frozenset(t for n in blocked for t in self.types[n])
        self.blocked -= self.blocked - blocked
        self.blocked |= blocked

    def guard(self, spec: HandlerSpec) -> HandlerSpec:
        """The handler wrapped so that it does not start while its destination is blocked,
        and counts its own run of failures (a PermanentError is the event's fault: not
        counted). Handlers of destinations without a breaker are returned as they are."""
        name = spec.destination
        cfg = self.configs.get(name)
        if cfg is None or cfg.breaker is None:
            return spec
        threshold = cfg.breaker.failures
        blocked, streak, func = self.blocked, self._streak, spec.func

        def failed() -> None:
            n = streak[name] = streak.get(name, 0) + 1
            if n >= threshold and name not in blocked:
                self.tripped.add(name)
                blocked.add(name)
                self._dirty = True

        if spec.is_async:

            async def guarded_async(arg: Any) -> Any:
                if name in blocked:
                    raise DestinationPaused(name)
                try:
                    result = await func(arg)
                except PermanentError:
                    raise
                except Exception:
                    failed()
                    raise
                streak[name] = 0
                return result

            return dataclasses.replace(spec, func=guarded_async)

        def guarded(arg: Any) -> Any:
            if name in blocked:
                raise DestinationPaused(name)
            try:
                result = func(arg)
            except PermanentError:
                raise
            except Exception:
                failed()
                raise
            streak[name] = 0
            return result

        return dataclasses.replace(spec, func=guarded)

    def _untrip(self, name: str) -> None:
        """The shared breaker is closed: a local trip was this process's alone."""
        if name in self.tripped:
            self.tripped.discard(name)
            self._streak[name] = 0
            self._dirty = True

    def wants_extra(self) -> bool:
        return bool(self.rated or self.probe_wanted)

    async def claim_extra(
        self, conn: AsyncConn, *, limit: int, lease_seconds: float
    ) -> list[tuple[list[tuple[Any, ...]], uuid.UUID]]:
        """Claims the ordinary claim leaves out: each closed rate-limited destination's events
        against its bucket, and one event per half-open probe this process holds. Rows are
        worker_claim's columns; each claim has its own lease token."""
        out: list[tuple[list[tuple[Any, ...]], uuid.UUID]] = []
        jobs = [(n, limit) for n in self.rated if self.state[n] == "closed"]
        jobs += [(n, 1) for n in sorted(self.probe_wanted)]
        for name, most in jobs:
            if not self.types[name]:
                continue
            token = uuid.uuid4()
            rows = await data.claim(
                conn,
                {
                    "destination": name,
                    "event_types": self.types[name],
                    "limit": most,
                    "worker": self.worker,
                    "lease_seconds": lease_seconds,
                    "token": token,
                },
            )
            if name in self.probe_wanted and rows:
                self.probe_wanted.discard(name)
                logger.info("breaker_probe_event destination=%s id=%s", name, rows[0][0])
            if rows:
                out.append((rows, token))
        return out

    def wait_hint(self, poll_interval: float) -> float:
        """How long the claimer may sleep when nothing more was due: a rate-limited destination
        gets new tokens sooner than the poll interval."""
        if self.probe_wanted:
            return min(poll_interval, RATE_POLL_MAX)
        if not self.rated:
            return poll_interval
        fastest = max(self.configs[n].rate_limit or 1.0 for n in self.rated)
        return min(poll_interval, max(RATE_POLL_MIN, min(RATE_POLL_MAX, 1.0 / fastest)))

    # -- outcomes ----------------------------------------------------------------------------------

    async def record(
        self,
        conn: AsyncConn,
        done_types: Iterable[str],
        failures: Iterable[tuple[str, bool, str]],
    ) -> list[Change]:
        """Add one flush's outcomes to the breakers: ``done_types`` one event type per delivered
        event, ``failures`` (event type, permanent, error) per failed attempt. A permanent error
        is the event's fault, not the destination's: it is not counted."""
        tally: dict[str, list[Any]] = {}  # destination -> [calls, failures, successes, error]
        dest_of = self.dest_of
        for event_type in done_types:
            name = dest_of.get(event_type)
            if name is not None:
                row = tally.setdefault(name, [0, 0, 0, None])
                row[0] += 1
                row[2] += 1
        for event_type, permanent, error in failures:
            name = dest_of.get(event_type)
            if name is not None and not permanent:
                row = tally.setdefault(name, [0, 0, 0, None])
                row[0] += 1
                row[1] += 1
                row[3] = error[:MAX_ERROR]
        names = sorted(n for n in tally if self.configs[n].breaker is not None)
        if not names:
            return []
        rows = await data.breaker_record(
            conn,
            {
                "destinations": names,
                "calls": [tally[n][0] for n in names],
                "failures": [tally[n][1] for n in names],
                "successes": [tally[n][2] for n in names],
                "errors": [tally[n][3] for n in names],
            },
        )
        # Every touched breaker comes back, changed or not: a flush of failures against a
        # breaker another process opened tells this one at once, not at the next refresh.
        return self._apply(rows)

    def _apply(self, rows: Iterable[dict[str, Any]]) -> list[Change]:
        changes = []
        for row in rows:
            name, new = row["destination"], row["state"]
            if new != "half_open":
                self.probe_wanted.discard(name)
                self.probing.discard(name)
            if new == "closed":
                self._untrip(name)
            else:
                self.tripped.discard(name)  # the shared state stops it now
            old = self.state.get(name, "closed")
            if old == new:
                continue
            self.state[name] = new
            changes.append(Change(name, old, new))
            log = logger.warning if new == "open" else logger.info
            log(
                "breaker_%s destination=%s worker=%s last_error=%s",
                new,
                name,
                self.worker,
                (row.get("last_error") or "-")[:200],
            )
        if changes or self._dirty:
            self._rebuild()
        return changes

    # -- refresh, probes -------------------------------------------------------------------------

    async def refresh(self, conn: AsyncConn) -> list[Change]:
        """Read every breaker's state (another process may have changed it), take the probes
        that are due, and run health checks. Returns the changes this process saw."""
        if not self.breakers:
            return []
        rows = await data.abreaker_states(conn, self.breakers)
        changes = []
        for row in rows:
            name = row["destination"]
            if row["state"] == "closed":
                self._untrip(name)
            if self.state.get(name) != row["state"]:
                changes.append(Change(name, self.state.get(name, "closed"), row["state"]))
                self.state[name] = row["state"]
                # Each process says when it learns of another's (or an operator's) change.
                logger.info(
                    "breaker_seen destination=%s state=%s worker=%s",
                    name,
                    row["state"],
                    self.worker,
                )
            if row["state"] != "half_open" or row["probe_by"] != self.worker:
                self.probe_wanted.discard(name)
                if name in self.probing:
                    self.probing.discard(name)
                    self._rebuild()
        if changes or self._dirty:
            self._rebuild()
        if any(s != "closed" for s in self.state.values()):
            changes += await self._probes(conn)
        return changes

    async def _probes(self, conn: AsyncConn) -> list[Change]:
        due = [n for n in self.breakers if self.state[n] != "closed"]
        taken = await data.breaker_take_probe(
            conn, due, worker=self.worker, lease_seconds=self.probe_lease
        )
        changes: list[Change] = []
        for row in taken:
            name = row["destination"]
            if self.state[name] != "half_open":
                changes.append(Change(name, self.state[name], "half_open"))
                self.state[name] = "half_open"
                self._rebuild()
            cfg = self.configs[name]
            if cfg.health_check is None:
                logger.info("breaker_half_open destination=%s probe=event", name)
                self.probe_wanted.add(name)
                self.probing.add(name)
                self._rebuild()
                continue
            healthy, error = await run_health_check(cfg)
            logger.info(
                "breaker_probe destination=%s healthy=%s error=%s", name, healthy, error or "-"
            )
            rows = await data.breaker_probe_result(
                conn, name, worker=self.worker, healthy=healthy, error=error
            )
            changes += self._apply(rows)
        return changes


async def run_health_check(cfg: DestinationConfig) -> tuple[bool, str | None]:
    """Run a destination's health check within its timeout: (healthy, error text). A check is
    healthy when it returns anything but False without raising; a sync one runs in a thread."""
    check = cfg.health_check
    assert check is not None
    try:
        async with asyncio.timeout(cfg.health_check_timeout):
            if inspect.iscoroutinefunction(check):
                result = await check()
            else:
                result = await asyncio.to_thread(check)
                if inspect.isawaitable(result):
                    result = await result
    except TimeoutError:
        return False, f"HealthCheckTimeout: no answer within {cfg.health_check_timeout:g}s"
    except Exception as exc:
        return False, f"{type(exc).__name__}: {str(exc)[:MAX_ERROR]}"
    if result is False:
        return False, "HealthCheckFailed: the health check returned False"
    return True, None
