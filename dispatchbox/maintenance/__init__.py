"""Maintenance services: small jobs beside the worker, one file each with a config of its own.

Owns: archival of finished events (``archiver``: done and dead rows moved to
outbox_event_archive in bounded batches, and the archive's purge), the alert evaluator
(``alerts``, ``alert_config``, ``alert_text``, ``fingerprint_alert``: when a threshold or a new
error fingerprint is crossed, and the words of each notice) and the pg_cron schedules (``cron``).

Layer: services (docs/en/architecture.md). May import only downward: the domain
(``dispatchbox.repository`` and its siblings), the data layer (queries, db) and the base modules
(errors, events, records, filters, fingerprint). Never observability, the API or the CLI: the
alert evaluator receives its channels (Slack, e-mail, PagerDuty, webhook) from whoever assembles
it (``dispatchbox.observability.alerting``, called by the CLI and the API).
"""
