-- Roles, grants and row-level security (dispatchbox/roles.py). The grants themselves are in
-- sql/grants.sql, the one place that lists the tables.

-- name: roles_may_create :one
-- Whether this session may create roles (superuser or CREATEROLE).
SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user

-- name: role_exists :one
-- Whether a role of this name exists in the cluster.
SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(role)s)

-- name: rls_enable :exec
-- Turn row-level security on for the tables with a dispatchbox_scope policy (migrations 0010,
-- 0012).
ALTER TABLE outbox_event ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_event_archive ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_fingerprint ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_summary ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_delta ENABLE ROW LEVEL SECURITY

-- name: rls_disable :exec
-- Turn row-level security off again: every role sees every row its grants allow.
ALTER TABLE outbox_event DISABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_event_archive DISABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_fingerprint DISABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_summary DISABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_hourly DISABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_dead_delta DISABLE ROW LEVEL SECURITY

-- name: rls_status :many
-- Whether row-level security is on, per table that has the scope policy.
SELECT relname AS table_name, relrowsecurity AS enabled
  FROM pg_class
 WHERE relnamespace = 'public'::regnamespace
   AND relname IN ('outbox_event', 'outbox_event_archive', 'outbox_dead_fingerprint',
                   'outbox_dead_summary', 'outbox_dead_hourly', 'outbox_dead_delta')
 ORDER BY relname

-- name: scope_add :exec
-- Limit a role to one more aggregate type.
INSERT INTO dispatchbox_role_scope (role_name, aggregate_type)
VALUES (%(role)s, %(aggregate_type)s)
ON CONFLICT (role_name, aggregate_type) DO NOTHING

-- name: scope_remove :exec
-- Take one aggregate type from a role's scope (none left: the role is no longer limited).
DELETE FROM dispatchbox_role_scope
 WHERE role_name = %(role)s AND aggregate_type = %(aggregate_type)s

-- name: scope_list :many
-- Every role's scope.
SELECT role_name, aggregate_type, granted_at, granted_by
  FROM dispatchbox_role_scope ORDER BY role_name, aggregate_type
