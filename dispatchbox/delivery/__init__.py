"""Delivery controls per destination: circuit breakers, health probes, replay of what died in an
outage, and rate limits.

Owns: the policies users configure with ``Dispatcher.destination()`` (``config``), what a worker
process does with them (``board``: claim exclusions, outcome counting, probes, token buckets),
the operator's actions on breakers (``admin``) and the replay after a recovery (``replay``).
The shared state lives in PostgreSQL (``outbox_breaker``, ``outbox_rate_limit``; SQL in
sql/queries/delivery.sql), never in one process.

May import only downward: ``dispatchbox.dispatcher``, ``dispatchbox.errors``,
``dispatchbox.queries`` and psycopg; never the CLI, the API or observability (they import this).
"""
