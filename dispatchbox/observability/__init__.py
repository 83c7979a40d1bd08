"""Observability: Prometheus metrics (``metrics``), the supervisor's metrics endpoint
(``exporter``), the worker's hooks into metrics and alerting (``worker_hooks``), and the alert
channels (``slack``, ``mail``, ``pagerduty``, ``webhook``) with ``alerting``, which picks the
configured channels and starts the maintenance alert evaluator with them.

Layer: observability, between the HTTP API and the services (docs/en/architecture.md). May
import only downward: the services (``dispatchbox.worker``'s hook interface and config,
``dispatchbox.maintenance``'s alert evaluator and texts), the domain, the data layer and the base
modules (``dispatchbox.outbound`` for URL checks and secret redaction). Never the API, the
console or the CLI, which assemble it.
"""
