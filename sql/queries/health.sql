-- name: health :one
-- The outbox_health view: counts by state, oldest pending age, oldest dead, expired leases.
-- Exact, and so it reads every pending entry: the product reads outbox_status (status.sql)
-- instead; the tests and `python -m bench big_tables` read this one as the exact reference.
SELECT pending, running, dead, oldest_pending_age_seconds, oldest_dead_at, expired_leases
  FROM outbox_health
