-- name: partition_status :one
-- Whether the outbox is partitioned, and the conversion's state (phase NULL: never started).
SELECT outbox_is_partitioned() AS partitioned, s.phase, s.partition_size, s.first_bound,
       s.next_bound, s.partitioned_at
  FROM (SELECT 1) one
  LEFT JOIN outbox_partition_state s ON true

-- name: partition_list :many
-- The outbox's partitions in id order, with their bounds.
SELECT partition_name, lo, hi FROM outbox_partitions()

-- name: partition_drop_invalid_key_index :exec
-- An index left invalid by an interrupted CREATE INDEX CONCURRENTLY is dropped before a retry.
DROP INDEX CONCURRENTLY IF EXISTS outbox_event_idempotency_key_idx

-- name: partition_key_index_invalid :one
-- true when outbox_event_idempotency_key_idx exists but is not valid.
SELECT NOT i.indisvalid FROM pg_index i
 WHERE i.indexrelid = to_regclass('outbox_event_idempotency_key_idx')

-- name: partition_create_key_index :exec
-- The partitioned outbox's look-up index for idempotency keys, built without blocking writes.
CREATE INDEX CONCURRENTLY IF NOT EXISTS outbox_event_idempotency_key_idx
    ON outbox_event (idempotency_key) WHERE idempotency_key IS NOT NULL

-- name: partition_set_lock_timeout :exec
-- How long this transaction's DDL waits for a lock before it fails (and is tried again).
SELECT set_config('lock_timeout', %(ms)s || 'ms', true)

-- name: partition_prepare :one
-- Step 1: the partitioned table beside the populated one; returns the first partitioned id.
SELECT outbox_partition_prepare(%(partition_size)s, %(headroom)s)

-- name: partition_validate_bound :exec
-- Step 2: prove id < first bound on the populated table (SHARE UPDATE EXCLUSIVE: no blocking).
ALTER TABLE outbox_event VALIDATE CONSTRAINT outbox_event_p0_bound

-- name: partition_swap :one
-- Step 3: the populated table becomes partition outbox_event_p0 (a brief exclusive lock).
SELECT outbox_partition_swap()

-- name: partition_finish :one
-- Step 4: validate the re-created foreign keys; drop keys of events gone meanwhile.
SELECT outbox_partition_finish()

-- name: partition_create_ahead :one
-- Partitions ahead of the id sequence; returns how many were created.
SELECT outbox_partition_create_ahead(%(spare)s)

-- name: partition_retire :one
-- Retire partitions that hold only done events older than the retention; returns the count.
CALL outbox_partition_retire(make_interval(days => %(retention_days)s), %(lock_timeout_ms)s, NULL)

-- name: partition_outbox_is_partitioned :one
-- true when outbox_event is the partitioned table (false before migration 0013 too).
SELECT COALESCE((SELECT c.relkind = 'p' FROM pg_class c
                  WHERE c.oid = to_regclass('outbox_event')), false)

-- name: partition_job_command :one
-- The statement the pg_cron partition job runs, quoted by the server.
SELECT format('CALL %%I.outbox_partition_maintain(retention_days => %%s)',
              %(schema)s::text, %(retention_days)s::integer)

-- name: partition_track_keys :one
-- Step 0: keyed inserts into the single table record their keys from now on (a brief lock).
SELECT outbox_partition_track_keys()

-- name: partition_convert_lock :one
-- One conversion at a time per database: a session lock, tried, never waited for (a second
-- `db partition convert` stops with a clear line instead of racing the first one's steps).
SELECT pg_try_advisory_lock(hashtext('dispatchbox.partition_convert'))

-- name: partition_convert_unlock :exec
-- Release the conversion's session lock.
SELECT pg_advisory_unlock(hashtext('dispatchbox.partition_convert'))
