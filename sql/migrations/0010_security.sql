-- 0010_security: row-level security for operators limited to some aggregate types, and the
-- "cleanup held back" alert (issue 16). Roles and grants are not here: sql/grants.sql, run by
-- `dispatchbox db migrate` (when it may create roles) and `dispatchbox db grant`.
--
-- * dispatchbox_role_scope: which aggregate types (tenants, teams) a role may see. A login role
--   that is a member of any role named here sees only the aggregate types listed for those
--   roles; a role named nowhere (the workers, an unrestricted operator) sees every row.
-- * dispatchbox_scoped_types(): the caller's aggregate types, NULL when it is not limited.
-- * Policies on outbox_event, outbox_event_archive and outbox_dead_fingerprint. They do nothing
--   until `dispatchbox db rls enable` turns row-level security on for those tables (opt-in);
--   the tables' owner is never limited by them. Catalog-only changes: no table is rewritten,
--   each statement takes a brief lock on its table.
-- * outbox_alert_state accepts the alert 'cleanup_held' (a transaction, replication slot or
--   prepared transaction holding back vacuum of the outbox for too long).

CREATE TABLE dispatchbox_role_scope (
    role_name      text        NOT NULL,
    aggregate_type text        NOT NULL,
    granted_at     timestamptz NOT NULL DEFAULT now(),
    granted_by     text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (role_name, aggregate_type)
);

COMMENT ON TABLE dispatchbox_role_scope IS
    'dispatchbox: aggregate types a role is limited to when row-level security is enabled';

CREATE FUNCTION dispatchbox_scoped_types() RETURNS text[]
    LANGUAGE sql STABLE AS $$
    SELECT array_agg(DISTINCT s.aggregate_type)
      FROM dispatchbox_role_scope s
      JOIN pg_roles r ON r.rolname = s.role_name
     WHERE pg_has_role(current_user, r.oid, 'MEMBER')
$$;

-- (SELECT ...) makes the scope an InitPlan: read once a statement, not once a row.
CREATE POLICY dispatchbox_scope ON outbox_event
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_event_archive
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_dead_fingerprint
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

ALTER TABLE outbox_alert_state
    DROP CONSTRAINT outbox_alert_state_alert_check,
    ADD CONSTRAINT outbox_alert_state_alert_check
        CHECK (alert IN ('dead_events', 'dead_count', 'dead_age', 'pending_age',
                         'breaker_open', 'cleanup_held'));

-- What holds back vacuum of the outbox: the oldest snapshot (a session's backend_xmin, e.g. a
-- REPEATABLE READ transaction left open), prepared transaction or replication slot, and the
-- outbox's dead tuples, for this database. Read by `db status`, the metrics and the 'cleanup_held' alert. Other
-- sessions' backend_xmin is visible to superusers and members of pg_read_all_stats only.
CREATE VIEW outbox_cleanup_horizon AS
WITH snapshots AS (
    SELECT pid, usename, application_name, state, backend_xmin,
           EXTRACT(EPOCH FROM now() - COALESCE(xact_start, backend_start))::double precision
               AS age_seconds
      FROM pg_stat_activity
     WHERE backend_xmin IS NOT NULL
       AND pid <> pg_backend_pid()
       AND backend_type <> 'autovacuum worker'
       -- a snapshot holds back this database's tables; a standby's feedback (walsender) all
       AND (datname = current_database() OR backend_type = 'walsender')
),
prepared AS (
    SELECT gid, transaction,
           EXTRACT(EPOCH FROM now() - prepared)::double precision AS age_seconds
      FROM pg_prepared_xacts
     WHERE database = current_database()
),
oldest AS (
    SELECT 'session ' || pid || ' (' || COALESCE(NULLIF(application_name, ''), '-') || ', '
           || COALESCE(usename::text, '-') || ', ' || COALESCE(state, '-') || ')' AS holder,
           age_seconds
      FROM snapshots
    UNION ALL
    SELECT 'prepared transaction ' || gid, age_seconds FROM prepared
     ORDER BY age_seconds DESC
     LIMIT 1
)
SELECT COALESCE((SELECT age_seconds FROM oldest), 0)::double precision AS held_seconds,
       (SELECT holder FROM oldest) AS held_by,
       COALESCE(GREATEST((SELECT max(age(backend_xmin)) FROM snapshots),
                         (SELECT max(age(transaction)) FROM prepared),
                         (SELECT max(GREATEST(age(xmin), age(catalog_xmin)))
                            FROM pg_replication_slots)), 0)::bigint AS held_xids,
       (SELECT string_agg(slot_name::text, ', ' ORDER BY slot_name) FROM pg_replication_slots
         WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL) AS slots_holding,
       COALESCE((SELECT n_dead_tup FROM pg_stat_user_tables
                  WHERE relid = 'outbox_event'::regclass), 0)::bigint AS outbox_dead_tuples,
       COALESCE((SELECT n_live_tup FROM pg_stat_user_tables
                  WHERE relid = 'outbox_event'::regclass), 0)::bigint AS outbox_live_tuples;
