-- name: migrations_lock :one
-- Serialise concurrent `db migrate` runs (session-level advisory lock, key "dispatchbox").
SELECT pg_advisory_lock(7466393547617329272)

-- name: migrations_unlock :one
-- Release the lock taken by migrations_lock.
SELECT pg_advisory_unlock(7466393547617329272)

-- name: migrations_create_version_table :exec
-- The version table; created by the first migrate run.
CREATE TABLE IF NOT EXISTS dispatchbox_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)

-- name: migrations_version_table_exists :one
-- Whether any migration ever ran here.
SELECT to_regclass('dispatchbox_schema_version') IS NOT NULL

-- name: migrations_applied :many
-- What has been applied, in order.
SELECT version, name, applied_at FROM dispatchbox_schema_version ORDER BY version

-- name: migrations_record :exec
-- Record one applied migration (same transaction as the migration itself).
INSERT INTO dispatchbox_schema_version (version, name) VALUES (%(version)s, %(name)s)

-- name: migrations_lock_timeout :one
-- How long this migration's transaction waits for a lock before it fails (e.g. '10000ms').
SELECT set_config('lock_timeout', %(ms)s, true)
