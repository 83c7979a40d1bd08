"""Delivery controls: what may be delivered, when, and in which order.

Owns per-aggregate ordering (``ordering``), expiry (``expiry``), backpressure on publish
(``backpressure``) and payload checksums (``checksum``), and, on the breakers branch, circuit
breakers and rate limits. Shared state lives in PostgreSQL (migration 0009; SQL in
sql/queries/delivery_order.sql), never in one process.

May import only downward: ``dispatchbox.dispatcher``, ``dispatchbox.errors``,
``dispatchbox.queries`` and psycopg; never the worker, the CLI, the API or observability (they
import this).
"""
