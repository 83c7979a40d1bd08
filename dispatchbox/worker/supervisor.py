"""The supervisor: starts N worker processes, restarts one that dies, stops all on a signal.

The first worker processes are forked (``fork_initial``) before the supervisor has imported the
user's app, opened a connection or started a thread: they inherit dispatchbox's modules already
imported (half a second of start-up saved per deploy), and nothing of the app's, no socket and
no lock. They wait at a gate while the supervisor checks the app and the schema, then load the
app themselves; if a check fails they are killed before they print anything. A process restarted
later is started with "spawn": by then the supervisor holds the app, connections and threads,
none of which a worker may inherit. Handlers run only in the workers.

Observers (metrics, alerts) are not this package's to import: the layer that assembles the
worker (dispatchbox/cli/worker.py) hands the supervisor a hook factory, a module-level callable
(picklable for a spawned process) that each worker process calls once to build its hooks.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType

from dispatchbox.errors import DispatchboxError
from dispatchbox.logging_setup import configure_logging
from dispatchbox.worker.config import WorkerConfig
from dispatchbox.worker.hooks import WorkerHooks

logger = logging.getLogger("dispatchbox.supervisor")

# Builds one worker process's hooks, in that process: (config, slot) -> hooks.
HookFactory = Callable[[WorkerConfig, int], WorkerHooks]


GO = b"go"  # through a forked worker's gate: the supervisor's checks passed


def worker_main(
    config: WorkerConfig,
    slot: int,
    hook_factory: HookFactory | None = None,
    gate: Connection | None = None,
    inherited: tuple[Connection, ...] = (),
) -> None:
    """Entry point of one worker process. A forked one first closes the supervisor's ends of
    the gates it inherited (its own among them: while any process holds a gate's sending end,
    the gate never reads as closed), then waits at its gate."""
    configure_logging(config.log_level)
    # The supervisor forwards SIGINT/SIGTERM; until the loop installs its own handlers, a
    # Ctrl-C must not print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for end in inherited:
        end.close()
    if gate is not None:
        try:
            passed = gate.recv_bytes() == GO
        except EOFError:  # the supervisor is gone
            passed = False
        gate.close()
        if not passed:
            os._exit(0)
    from dispatchbox.worker.loader import load_dispatcher
    from dispatchbox.worker.process import run_process

    try:
        dispatcher = load_dispatcher(config.app, config.app_path, routes_file=config.routes_file)
        hooks = None if hook_factory is None else hook_factory(config, slot)
        run_process(config, dispatcher, hooks)
    except DispatchboxError as exc:
        logger.error("worker_process_failed slot=%d error=%s", slot, exc)
        sys.exit(1)
    except Exception:
        logger.exception("worker_process_crashed slot=%d", slot)
        sys.exit(1)


def preload() -> None:
    """What every worker process needs, imported in the supervisor before it forks them."""
    import dispatchbox.worker.loader
    import dispatchbox.worker.process  # noqa: F401

    # Out of the cycle collector's sight before the fork, as each worker would do at start
    # (tune_gc): a full collection of all these modules costs every worker ~17 ms otherwise,
    # and frozen objects are not written to, so their pages stay shared with the workers.
    gc.collect()
    gc.freeze()


@dataclass
class _Slot:
    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    restart_delay: float = 1.0
    restart_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        hook_factory: HookFactory | None = None,
        on_process_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        # Each worker process calls it once for its hooks (None: the no-op hooks).
        self.hook_factory = hook_factory
        # Called with the pid of every worker process that ended (metrics bookkeeping).
        self.on_process_exit = on_process_exit
        self.ctx = multiprocessing.get_context("spawn")
        self.slots = [_Slot(i) for i in range(config.processes)]
        self.stopping = False
        self._gates: list[Connection] = []  # the supervisor's ends of the forked ones' gates

    def fork_initial(self) -> None:
        """Fork every worker process, each held at its gate until ``release``."""
        preload()
        fork = multiprocessing.get_context("fork")
        for slot in self.slots:
            wait_end, release_end = fork.Pipe(duplex=False)
            self._gates.append(release_end)
            proc = fork.Process(
                target=worker_main,
                args=(self.config, slot.index, self.hook_factory, wait_end, tuple(self._gates)),
                name=f"dispatchbox-worker-{slot.index}",
            )
            proc.start()
            wait_end.close()
            slot.process = proc
            slot.started = time.monotonic()

    def release(self) -> None:
        """The checks passed: the forked processes load the app and start work."""
        for gate in self._gates:
            gate.send_bytes(GO)
            gate.close()
        self._gates = []
        for slot in self.slots:  # said only now: a failed check ends them unannounced
            if slot.process is not None:
                logger.info("worker_process_started slot=%d pid=%s", slot.index, slot.process.pid)

    def abort(self) -> None:
        """A check failed: end the forked processes before they load anything."""
        for gate in self._gates:
            gate.close()  # EOF: each exits quietly, at once
        self._gates = []
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(5)
                if slot.process.is_alive():  # cannot happen; never leave one behind
                    slot.process.kill()
                    slot.process.join(5)
                slot.process = None

    def _start(self, slot: _Slot) -> None:
        proc = self.ctx.Process(
            target=worker_main,
            args=(self.config, slot.index, self.hook_factory),
            name=f"dispatchbox-worker-{slot.index}",
        )
        proc.start()
        slot.process = proc
        slot.started = time.monotonic()
        logger.info("worker_process_started slot=%d pid=%s", slot.index, proc.pid)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            logger.info("supervisor_stopping signal=%s", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.release()
        for slot in self.slots:
            if slot.process is None:
                self._start(slot)
        while not self.stopping:
            time.sleep(0.2)
            now = time.monotonic()
            if self.stopping:
                break
            for slot in self.slots:
                proc = slot.process
                if proc is not None and not proc.is_alive():
                    code = proc.exitcode
                    self._exited(proc)
                    proc.close()
                    slot.process = None
                    # A process that dies soon after starting waits longer each time, so a
                    # crash loop (bad handler import, schema missing) does not spin the CPU.
                    if now - slot.started < 10:
                        slot.restart_delay = min(slot.restart_delay * 2, 30.0)
                    else:
                        slot.restart_delay = 1.0
                    slot.restart_at = now + slot.restart_delay
                    logger.warning(
                        "worker_process_died slot=%d exitcode=%s restart_in=%.0fs",
                        slot.index,
                        code,
                        slot.restart_delay,
                    )
                if slot.process is None and not self.stopping and now >= slot.restart_at:
                    self._start(slot)
        return self._stop_all()

    def _stop_all(self) -> int:
        alive = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for proc in alive:
            proc.terminate()  # SIGTERM; the worker finishes in-flight handlers, then exits
        deadline = time.monotonic() + self.config.grace_period + 20
        for proc in alive:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in alive:
            if proc.is_alive():
                logger.error("worker_process_killed pid=%s (did not stop in time)", proc.pid)
                proc.kill()
                proc.join(5)
            self._exited(proc)
        logger.info("supervisor_stopped")
        return 0

    def _exited(self, proc: BaseProcess) -> None:
        if self.on_process_exit is not None and proc.pid is not None:
            try:
                self.on_process_exit(proc.pid)
            except Exception:
                logger.exception("on_process_exit_failed pid=%s", proc.pid)
