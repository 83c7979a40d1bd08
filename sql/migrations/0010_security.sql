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
                         'cleanup_held'));
