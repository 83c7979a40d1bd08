-- Scrape-time metrics (dispatchbox/observability/metrics.py, DatabaseCollector).
--
-- Run together in one read-only transaction at most once per cache period (a few seconds),
-- however many scrapers ask. Each reads a partial index or a narrow table, never the whole
-- outbox.

-- name: metrics_snapshot :exec
-- First statement of a scrape: one consistent snapshot, no writes.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: metrics_dead_by_type :many
-- Dead events now, per event type and aggregate type (exact: the summary of migration 0012).
SELECT event_type, aggregate_type, sum(dead_count)::bigint AS count
  FROM outbox_dead_groups
 GROUP BY event_type, aggregate_type
 ORDER BY count DESC, event_type, aggregate_type

-- name: metrics_dead_by_destination :many
-- Dead events now, per destination (exact: the summary of migration 0012).
SELECT destination, sum(dead_count)::bigint AS count
  FROM outbox_dead_groups
 GROUP BY destination
 ORDER BY count DESC, destination

-- name: metrics_dead_inflow :many
-- Events that died in the last window seconds and are still dead, per error fingerprint.
SELECT f.fingerprint, count(*) AS count
  FROM outbox_event e
  JOIN outbox_dead_fingerprint f ON f.event_id = e.id
 WHERE e.status = 'dead'
   AND e.dead_at >= now() - make_interval(secs => %(window)s)
 GROUP BY f.fingerprint
 ORDER BY count DESC, f.fingerprint

-- name: metrics_redriven :many
-- Events redriven at least once, by where they are now (outbox_event_redriven_idx).
SELECT status, count(*) AS count
  FROM outbox_event
 WHERE redrive_count > 0
 GROUP BY status

-- name: metrics_alert_state :many
-- Each alert's open incident flag and message counters, per channel (outbox_alert_state).
SELECT alert, channel, active, messages_sent, send_failures
  FROM outbox_alert_state
 ORDER BY alert, channel
