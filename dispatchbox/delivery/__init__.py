"""Delivery controls: what may be delivered, when, at what pace and in which order.

Owns, per destination: circuit breakers with health probes, the replay of what died in an outage
and rate limits (``config``: what users set with ``Dispatcher.destination()``; ``board``: what a
worker process does with them; ``admin``: the operator's actions on breakers; ``replay``). And
per event: ordering per aggregate (``ordering``), expiry (``expiry``), backpressure on publish
(``backpressure``) and payload checksums (``checksum``). Shared state lives in PostgreSQL
(migrations 0008 and 0009; SQL in sql/queries/delivery.sql and delivery_order.sql), never in one
process.

Layer: domain (docs/en/architecture.md). May import its domain siblings
(``dispatchbox.dispatcher``, which imports ``config``; ``dispatchbox.repository`` for checksums),
the data layer (``dispatchbox.data``) and the base modules; never the worker, maintenance,
redrive, observability, the API, the console or the CLI (they import this).
"""
