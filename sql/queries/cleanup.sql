-- What holds back vacuum of the outbox (the view outbox_cleanup_horizon, migration 0010): read
-- by `db status`, the metrics and the 'cleanup_held' alert.

-- name: cleanup_horizon :one
-- The oldest snapshot, prepared transaction or replication slot holding back cleanup, and the
-- outbox's dead tuples.
SELECT held_seconds, held_by, held_xids, slots_holding, outbox_dead_tuples, outbox_live_tuples
  FROM outbox_cleanup_horizon

-- name: alert_cleanup_held :one
-- Seconds the oldest snapshot or prepared transaction has held back cleanup (0 when none).
SELECT held_seconds FROM outbox_cleanup_horizon
