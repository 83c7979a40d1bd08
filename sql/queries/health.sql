-- name: health :one
-- The outbox_health view: counts by state, oldest pending age, oldest dead, expired leases.
SELECT pending, running, dead, oldest_pending_age_seconds, oldest_dead_at, expired_leases
  FROM outbox_health
