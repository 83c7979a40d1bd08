-- dispatchbox's three roles and what each may do: the one place that lists the tables.
--
-- Run by `dispatchbox db migrate` (when its user may create roles) and by `dispatchbox db grant`,
-- one statement at a time, every time: each statement is idempotent. A table added by a later
-- migration gets its line here. dispatchbox/roles.py creates the roles (NOLOGIN) before this file
-- runs; grant them to login roles with `GRANT dispatchbox_worker TO app_worker;`.
--
-- dispatchbox_worker:   claim, complete, fail, heartbeat, reap; alert state; no DELETE anywhere,
--                       nothing of the audit trail, no archive.
-- dispatchbox_operator: read everything; redrive, export, purge and archive dead events; the
--                       audit trail (it writes a row for every action).
-- dispatchbox_reader:   read-only, the audit trail included.
-- Functions keep PostgreSQL's default EXECUTE for PUBLIC: they run with the caller's rights, so
-- the table grants below decide what a call may touch. The two exceptions are trigger functions
-- (callable only as triggers): outbox_idempotency_claim and outbox_idempotency_release keep the
-- idempotency keys of a partitioned outbox for whichever role publishes or archives.
-- Every line is one statement ending with ";" at the end of the line (roles.py splits on that).

GRANT USAGE ON SCHEMA public TO dispatchbox_worker, dispatchbox_operator, dispatchbox_reader;

-- worker
GRANT SELECT ON dispatchbox_schema_version, outbox_health, outbox_cleanup_horizon
    TO dispatchbox_worker;
GRANT SELECT, UPDATE ON outbox_event TO dispatchbox_worker;
GRANT INSERT ON outbox_event_error TO dispatchbox_worker;
-- DELETE: a breaker's replay on recovery (run by the worker) redrives dead events, which leave
-- the fingerprint mirror (and so the dead-letter summary) as they go.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_dead_fingerprint TO dispatchbox_worker;
GRANT SELECT, INSERT, UPDATE ON outbox_alert_state TO dispatchbox_worker;
GRANT SELECT ON dispatchbox_role_scope TO dispatchbox_worker;
-- Delivery controls: breakers and the backlog counts are shared state every worker writes; a
-- worker drops the token bucket of a destination whose rate limit was removed (the one DELETE
-- it may do, of configuration, never of events). A replay after a recovery is audited by the
-- worker that runs it: it inserts its entry and counts its progress, and reads no one's actions.
GRANT SELECT, INSERT, UPDATE ON outbox_breaker, outbox_backlog TO dispatchbox_worker;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_rate_limit TO dispatchbox_worker;
GRANT INSERT ON outbox_dead_letter_audit TO dispatchbox_worker;
-- A dead event's fingerprint is registered by a trigger that runs with the worker's rights.
GRANT SELECT, INSERT, UPDATE ON outbox_error_fingerprint_seen TO dispatchbox_worker;
-- The dead-letter summaries (0012) are kept by triggers that run with the worker's rights: a
-- death appends a delta, and a fold moves deltas into the summaries and deletes emptied rows.
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_dead_summary, outbox_dead_hourly,
    outbox_dead_delta TO dispatchbox_worker;
GRANT SELECT ON outbox_dead_groups, outbox_dead_hours TO dispatchbox_worker;
GRANT SELECT (id, affected, outcome) ON outbox_dead_letter_audit TO dispatchbox_worker;
GRANT UPDATE (affected, outcome, finished_at, updated_at) ON outbox_dead_letter_audit
    TO dispatchbox_worker;

-- operator
GRANT SELECT ON dispatchbox_schema_version, outbox_health, outbox_cleanup_horizon
    TO dispatchbox_operator;
GRANT SELECT, UPDATE, DELETE ON outbox_event TO dispatchbox_operator;
GRANT SELECT, INSERT, DELETE ON outbox_event_error TO dispatchbox_operator;
GRANT SELECT, INSERT, DELETE ON outbox_event_archive TO dispatchbox_operator;
GRANT SELECT, INSERT, DELETE ON outbox_event_error_archive TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_dead_fingerprint TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE ON outbox_dead_letter_audit TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE ON outbox_alert_state TO dispatchbox_operator;
GRANT SELECT ON dispatchbox_role_scope TO dispatchbox_operator;
GRANT SELECT ON outbox_partition_state, outbox_idempotency_key TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE ON outbox_breaker TO dispatchbox_operator;
GRANT SELECT ON outbox_rate_limit, outbox_backlog TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE ON outbox_redrive_operation, outbox_error_fingerprint_seen
    TO dispatchbox_operator;
GRANT SELECT, INSERT, UPDATE, DELETE ON outbox_dead_summary, outbox_dead_hourly,
    outbox_dead_delta TO dispatchbox_operator;
GRANT SELECT ON outbox_dead_groups, outbox_dead_hours TO dispatchbox_operator;

-- reader
GRANT SELECT ON dispatchbox_schema_version, outbox_health, outbox_cleanup_horizon
    TO dispatchbox_reader;
GRANT SELECT ON outbox_event, outbox_event_error, outbox_event_archive TO dispatchbox_reader;
GRANT SELECT ON outbox_event_error_archive, outbox_dead_fingerprint TO dispatchbox_reader;
GRANT SELECT ON outbox_dead_letter_audit, outbox_alert_state TO dispatchbox_reader;
GRANT SELECT ON dispatchbox_role_scope TO dispatchbox_reader;
GRANT SELECT ON outbox_breaker, outbox_rate_limit, outbox_backlog TO dispatchbox_reader;
GRANT SELECT ON outbox_redrive_operation, outbox_error_fingerprint_seen TO dispatchbox_reader;
GRANT SELECT ON outbox_partition_state, outbox_idempotency_key TO dispatchbox_reader;
GRANT SELECT ON outbox_dead_summary, outbox_dead_hourly, outbox_dead_delta TO dispatchbox_reader;
GRANT SELECT ON outbox_dead_groups, outbox_dead_hours TO dispatchbox_reader;
