"""The HTTP API of ``dispatchbox serve`` (FastAPI): dead events, breakers and redrive operations
over HTTP, health, readiness and metrics.

Owns: the routes (``app``, ``breakers``, ``redrive_routes``), the request and response models
(``models``, derived from ``dispatchbox.records``) and the bearer-token check (``auth``, which the
console shares).

Layer: http api (docs/en/architecture.md). May import only downward: observability (metrics,
the alert evaluators it starts), the services (redrive, maintenance), the domain (repository,
delivery), the data layer and the base modules. Never the console or the CLI: what is served
beside the API on the same app (the console at /ui) is passed to ``create_app(mount=...)`` by the
assembler, ``dispatchbox.cli.serve``.
"""
