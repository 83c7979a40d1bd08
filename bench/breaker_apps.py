"""Handlers of the breaker benchmarks: three destinations, alpha, beta and gamma, each a 1 ms
downstream call (a sleep). Gamma is down (ConnectionRefusedError, and its health check fails)
while the file $DBX_CONTROL_DIR/gamma.down exists. Gamma's cool-down (the probe interval) is
$DBX_PROBE_INTERVAL seconds, fixed (no growth) so that recovery is measured in probe intervals;
$DBX_MAX_COOLDOWN lets it grow for the long outage."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dispatchbox import BreakerPolicy, Dispatcher, OutboxEvent

dispatcher = Dispatcher()
CONTROL = Path(os.environ.get("DBX_CONTROL_DIR", "."))
PROBE = float(os.environ.get("DBX_PROBE_INTERVAL", "1"))
MAX_COOLDOWN = float(os.environ.get("DBX_MAX_COOLDOWN", str(PROBE)))
CALL = 0.001  # seconds a downstream call takes


def gamma_down() -> bool:
    return (CONTROL / "gamma.down").exists()


def gamma_health() -> None:
    if gamma_down():
        raise ConnectionRefusedError("gamma: connection refused")


for name in ("alpha", "beta"):
    dispatcher.destination(name, breaker=BreakerPolicy(cooldown=PROBE))
dispatcher.destination(
    "gamma",
    breaker=BreakerPolicy(failures=5, cooldown=PROBE, max_cooldown=MAX_COOLDOWN),
    health_check=gamma_health,
)


@dispatcher.handler("bench.alpha", destination="alpha")
def alpha(event: OutboxEvent) -> None:
    time.sleep(CALL)


@dispatcher.handler("bench.beta", destination="beta")
def beta(event: OutboxEvent) -> None:
    time.sleep(CALL)


@dispatcher.handler("bench.gamma", destination="gamma")
def gamma(event: OutboxEvent) -> None:
    if gamma_down():
        raise ConnectionRefusedError("gamma refused the call")
    time.sleep(CALL)
