"""Canary and health-paced redrives as resumable operations (outbox_redrive_operation).

A canary redrive sends a sample (whole aggregates) back to pending, waits until every event of
it is done or dead again, and promotes the rest only when enough succeeded and no new error
group appeared; a paced redrive (or a canary's promotion) sends the rest in order-preserving
batches at a fixed rate or at the pace AdaptivePacer sets from what the sent events did. Every
step commits its own transaction with the operation row and one audit row (the operation is
one audited action), so an interrupted run is continued with ``run(id)`` (``--resume ID``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import psycopg

from dispatchbox.data import audit, dead_letters
from dispatchbox.data import redrive as data
from dispatchbox.errors import InvalidFilter, OperationInProgress
from dispatchbox.filters import DeadEventFilter
from dispatchbox.redrive.operation import (
    CanaryVerdict,
    Connect,
    DatabaseBreakers,
    RedriveOperation,
    filter_of,
)
from dispatchbox.redrive.pacer import BreakerGate, Health
from dispatchbox.redrive.plan import RedrivePlan, plan_redrive, selection_params
from dispatchbox.redrive.promote import POLL, Promotion, health_of, promote

Report = Callable[[str], None]


class RedriveService:
    """``connect`` yields an autocommit connection (OutboxRepository.connection)."""

    def __init__(
        self,
        connect: Connect,
        *,
        gate: BreakerGate | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._connect = connect
        self.gate = gate or DatabaseBreakers(connect)
        self._sleep = sleep

    # -- reads --------------------------------------------------------------------------------

    def plan(
        self,
        flt: DeadEventFilter,
        *,
        max_replays: int | None = None,
        rate: float | None = None,
        limit: int | None = None,
    ) -> RedrivePlan:
        with self._connect() as conn, conn.transaction():
            dead_letters.snapshot(conn)
            return plan_redrive(conn, flt, max_replays=max_replays, rate=rate, limit=limit)

    def get(self, op_id: int) -> RedriveOperation | None:
        with self._connect() as conn:
            row = data.redrive_op_read(conn, {"id": op_id})
        return None if row is None else RedriveOperation(**row)

    def operations(self, limit: int = 20) -> list[RedriveOperation]:
        with self._connect() as conn:
            return [RedriveOperation(**r) for r in data.redrive_op_list(conn, {"limit": limit})]

    # -- start --------------------------------------------------------------------------------

    def start(
        self,
        flt: DeadEventFilter,
        *,
        actor: str,
        canary: tuple[str, float] | None = None,
        canary_success: float = 95.0,
        max_replays: int | None = None,
        rate: float | None = None,
        adaptive: bool = False,
        settle_timeout: float = 300.0,
    ) -> RedriveOperation:
        """Create the operation and, for a canary, send the sample. Returns it; ``run`` goes on."""
        if not 0 <= canary_success <= 100:
            raise InvalidFilter("--canary-success must be a percentage between 0 and 100")
        mode = "canary" if canary is not None else "paced"
        settings: dict[str, Any] = {
            "canary": None if canary is None else {"kind": canary[0], "value": canary[1]},
            "canary_success": canary_success,
            "max_replays": max_replays,
            "rate": rate,
            "adaptive": adaptive,
            "settle_timeout": settle_timeout,
        }
        params = selection_params(flt, max_replays=max_replays)
        with self._connect() as conn:
            with conn.transaction():
                # The breakers that may pause it: the destinations its events died at, and their
                # event types (a handler's destination unless it names one; a death without a
                # recorded destination).
                types = dead_letters.stats_by(conn, "event_type", flt)
                named = dead_letters.stats_by(conn, "destination", flt)
                settings["destinations"] = sorted(
                    {r["key"] for r in types} | {r["key"] for r in named if r["key"]}
                )
                baseline = data.redrive_baseline(conn, params)
                audit_id = audit.insert(
                    conn,
                    actor=actor,
                    action=f"redrive_{mode}",
                    affected=0,
                    filter=flt,
                    outcome="in_progress",
                    details=settings,
                )
                row = data.redrive_op_insert(
                    conn,
                    {
                        "actor": actor,
                        "mode": mode,
                        "phase": "canary" if canary else "promoting",
                        "filter": json.dumps(flt.to_json()),
                        "settings": json.dumps(settings),
                        "baseline": list(baseline or []),
                        "audit_id": audit_id,
                    },
                )
                assert row is not None
                op_id, cutoff = int(row["id"]), row["cutoff"]
            if canary is not None:
                self._send_canary(conn, op_id, audit_id, flt, canary, max_replays, cutoff, actor)
        found = self.get(op_id)
        assert found is not None
        return found

    def _send_canary(
        self,
        conn: psycopg.Connection[Any],
        op_id: int,
        audit_id: int,
        flt: DeadEventFilter,
        canary: tuple[str, float],
        max_replays: int | None,
        cutoff: datetime,
        actor: str,
    ) -> None:
        params = selection_params(flt, max_replays=max_replays, cutoff=cutoff)
        with conn.transaction():
            if canary[0] == "count":
                size = int(canary[1])
            else:
                total = int(data.redrive_plan_total(conn, params) or 0)
                size = max(1, math.ceil(total * canary[1] / 100))
            ids = list(data.redrive_canary_sample(conn, {**params, "size": size}) or [])
            sent: list[int] = []
            if ids:
                row = data.redrive_ordered_batch(conn,
                    {**params, "after_id": 0, "only": ids, "exclude": None,
                     "batch_size": len(ids), "actor": actor, "held": []},
                )  # fmt: skip
                assert row is not None
                sent = list(row["ids"])
            data.redrive_op_canary(conn, {"id": op_id, "ids": sent, "n": len(sent)})
            audit.progress(conn, audit_id, len(sent))
            if sent:
                dead_letters.notify_workers(conn)

    # -- run ----------------------------------------------------------------------------------

    def run(
        self,
        op_id: int,
        *,
        wait: float | None = None,
        report: Report | None = None,
        budget: float | None = None,
    ) -> RedriveOperation:
        """Drive the operation as far as it goes: wait for the canary (at most ``wait`` seconds,
        default its settle timeout), judge it, promote (for at most ``budget`` seconds, default
        until done; the phase stays ``promoting`` and ``run`` goes on from there). Returns the
        operation as it stands."""
        say = report or (lambda _: None)
        with self._connect() as conn:
            if not data.redrive_op_try_lock(conn, {"id": op_id}):
                raise OperationInProgress(f"redrive operation {op_id} is being run by someone else")
            try:
                deadline = None if budget is None else time.monotonic() + budget
                self._run_locked(conn, op_id, wait, say, deadline)
            finally:
                data.redrive_op_unlock(conn, {"id": op_id})
        found = self.get(op_id)
        assert found is not None
        return found

    def _load(self, conn: psycopg.Connection[Any], op_id: int) -> RedriveOperation:
        row = data.redrive_op_read(conn, {"id": op_id})
        if row is None:
            raise InvalidFilter(f"no redrive operation {op_id}")
        return RedriveOperation(**row)

    def _run_locked(
        self,
        conn: psycopg.Connection[Any],
        op_id: int,
        wait: float | None,
        say: Report,
        deadline: float | None,
    ) -> None:
        op = self._load(conn, op_id)
        if op.phase in ("completed", "stopped"):
            say(f"operation {op_id} is {op.phase}" + (f": {op.reason}" if op.reason else ""))
            return
        if op.audit_id is not None:
            data.redrive_audit_reopen(conn, {"id": op.audit_id})
        try:
            if op.phase in ("canary", "interrupted") and op.mode == "canary" and not op.verdict:
                verdict = self._await_canary(conn, op, wait, say)
                if verdict is None:
                    self._finish_audit(conn, op, "interrupted")
                    return
                phase = "promoting" if verdict.passed else "stopped"
                data.redrive_op_phase(conn,
                    {"id": op_id, "phase": phase, "verdict": json.dumps(asdict(verdict)),
                     "reason": None if verdict.passed else verdict.reason},
                )  # fmt: skip
                say(verdict.reason)
                if not verdict.passed:
                    self._finish_audit(conn, op, "completed")
                    return
                op = self._load(conn, op_id)
            finished = self._promote(conn, op, say, deadline)
        except BaseException:
            data.redrive_op_phase(
                conn,
                {"id": op_id, "phase": "interrupted", "verdict": None, "reason": None},
            )
            self._finish_audit(conn, op, "interrupted")
            raise
        if not finished:
            say(f"promotion paused at its time budget; run it again (--resume {op_id})")
            self._finish_audit(conn, op, "interrupted")
            return
        data.redrive_op_phase(
            conn,
            {"id": op_id, "phase": "completed", "verdict": None, "reason": None},
        )
        self._finish_audit(conn, op, "completed")

    @staticmethod
    def _finish_audit(conn: psycopg.Connection[Any], op: RedriveOperation, outcome: str) -> None:
        if op.audit_id is not None:
            audit.finish(conn, op.audit_id, outcome)

    def _await_canary(
        self, conn: psycopg.Connection[Any], op: RedriveOperation, wait: float | None, say: Report
    ) -> CanaryVerdict | None:
        ids = op.canary_ids or []
        default = op.settings.get("settle_timeout")
        limit = (300.0 if default is None else float(default)) if wait is None else wait
        deadline = time.monotonic() + limit
        while True:
            health = self._health(conn, ids, op.created_at)
            say(
                f"canary of {len(ids):,}: {health.done:,} done, {health.dead:,} dead again, "
                f"{health.open:,} not settled"
            )
            if health.open == 0 or time.monotonic() >= deadline:
                break
            self._sleep(POLL)
        if health.open:
            say(
                f"the canary did not settle within {limit:g}s; nothing promoted "
                f"(resume with --resume {op.id})"
            )
            return None
        return self._verdict(conn, op, ids, health)

    def _verdict(
        self, conn: psycopg.Connection[Any], op: RedriveOperation, ids: list[int], health: Health
    ) -> CanaryVerdict:
        required = float(op.settings.get("canary_success") or 0)
        new = data.redrive_new_fingerprints(
            conn,
            {"ids": ids, "since": op.created_at, "baseline": op.baseline or []},
        )
        judged = health.done + health.dead
        rate = None if judged == 0 else 100.0 * health.done / judged
        gone = len(ids) - health.done - health.dead - health.open
        if not ids or rate is None:
            passed, reason = (
                False,
                "the canary sample was empty: nothing to judge, nothing promoted",
            )
        elif new:
            sig = new[0]["signature"]
            passed = False
            reason = (
                f"stopped: {len(new)} new error group(s) in the canary, e.g. "
                f"{new[0]['fingerprint']} ({sig}); nothing promoted"
            )
        elif rate < required:
            passed = False
            reason = (
                f"stopped: {rate:.1f}% of the canary succeeded, {required:g}% required; "
                "nothing promoted"
            )
        else:
            passed = True
            reason = (
                f"canary passed: {rate:.1f}% succeeded (>= {required:g}%), no new error group; "
                "promoting"
            )
        return CanaryVerdict(
            sample=len(ids), done=health.done, dead=health.dead, open=health.open, gone=gone,
            success_rate=rate, required=required, new_fingerprints=new, passed=passed,
            reason=reason,
        )  # fmt: skip

    def _health(self, conn: psycopg.Connection[Any], ids: list[int], since: datetime) -> Health:
        return health_of(conn, ids, since)

    def _promote(
        self,
        conn: psycopg.Connection[Any],
        op: RedriveOperation,
        say: Report,
        deadline: float | None = None,
    ) -> bool:
        params = {
            **selection_params(
                filter_of(op), max_replays=op.settings.get("max_replays"), cutoff=op.cutoff
            ),
            "only": None,
            # The cutoff already leaves the canary out: its events are not dead, or died after
            # the cutoff (an id list here would be compared with every row).
            "exclude": None,
            "actor": op.actor,
        }
        return promote(
            conn,
            Promotion(op.id, op.audit_id, op.after_id, op.redriven, op.settings, params),
            gate=self.gate,
            sleep=self._sleep,
            say=say,
            deadline=deadline,
        )
