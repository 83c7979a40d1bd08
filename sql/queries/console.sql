-- The console's own reads and its one write (dispatchbox/console/store.py).
--
-- Everything else the console does goes through OutboxRepository and its queries
-- (dead_letters.sql, audit.sql): the console adds what the CLI never needed, a chart, a group's
-- targets, the audit entries of one event, and the payload edit before a redrive.

-- name: console_snapshot :exec
-- First statement of a page's reads: one consistent snapshot, no writes.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: console_deaths_over_time :many
-- Events still dead, per UTC hour of their death over the last `hours` hours, from the hourly
-- summary of migration 0012 (redriven and archived events have left it and are not counted).
SELECT h.hour AS bucket, sum(h.dead_count)::bigint AS count
  FROM outbox_dead_hours h
 WHERE h.hour >= outbox_dead_hour(now()) - make_interval(hours => %(hours)s - 1)
 GROUP BY 1
 ORDER BY 1

-- name: console_error_groups :many
-- Dead events that match the filter, counted per error fingerprint and target (event type: the
-- mirror has no destination), with first and last death and the lowest id: one pass over the
-- narrow outbox_dead_fingerprint mirror gives the total, the groups and what each group hits. The
-- outbox row is read only when the filter needs last_error or a destination.
SELECT f.fingerprint, f.event_type AS target, count(*) AS count, min(f.dead_at) AS first_seen,
       max(f.dead_at) AS last_seen, min(f.event_id) AS example_id
  FROM outbox_dead_fingerprint f
 WHERE (%(event_type)s::text IS NULL OR f.event_type = %(event_type)s::text)
   AND (%(aggregate_type)s::text IS NULL OR f.aggregate_type = %(aggregate_type)s::text)
   AND (%(since)s::timestamptz IS NULL OR f.dead_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR f.dead_at < %(until)s::timestamptz)
   AND (%(error_fingerprint)s::text IS NULL OR f.fingerprint = %(error_fingerprint)s::text)
   AND (%(error_like)s::text IS NULL OR EXISTS (
           SELECT 1 FROM outbox_event e
            WHERE e.id = f.event_id AND e.status = 'dead'
              AND e.last_error ILIKE %(error_like)s::text))
   -- The mirror has no destination: the outbox row is read only when the filter names one.
   AND (%(destination)s::text IS NULL OR EXISTS (
           SELECT 1 FROM outbox_event e
            WHERE e.id = f.event_id AND e.status = 'dead'
              AND e.destination = %(destination)s::text))
 GROUP BY 1, 2

-- name: console_error_groups_summary :many
-- console_error_groups from the summary of migration 0012 when the filter names only event type,
-- aggregate type, destination or fingerprint: O(groups) rows, and the lowest matching id of each
-- (fingerprint, event type) from the mirror's fingerprint index.
SELECT g.fingerprint, g.target, g.count, g.first_seen, g.last_seen, ex.event_id AS example_id
  FROM (SELECT s.fingerprint, s.event_type AS target, sum(s.dead_count)::bigint AS count,
               min(s.first_dead_at) AS first_seen, max(s.last_dead_at) AS last_seen
          FROM outbox_dead_groups s
         WHERE (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
           AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
           AND (%(error_fingerprint)s::text IS NULL
                OR s.fingerprint = %(error_fingerprint)s::text)
           AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)
         GROUP BY 1, 2) g
 CROSS JOIN LATERAL (
    SELECT f.event_id FROM outbox_dead_fingerprint f
     WHERE f.fingerprint = g.fingerprint AND f.event_type = g.target
       AND (%(aggregate_type)s::text IS NULL OR f.aggregate_type = %(aggregate_type)s::text)
       AND (%(destination)s::text IS NULL OR f.destination = %(destination)s::text)
     ORDER BY f.event_id
     LIMIT 1
 ) ex

-- name: console_group_destinations_summary :many
-- Where the events of each shown error group died, exactly, from the summary (migration 0012);
-- NULL: died before migration 0007, or of a lease that expired.
SELECT s.fingerprint, s.destination, sum(s.dead_count)::bigint AS count
  FROM outbox_dead_groups s
 WHERE s.fingerprint = ANY (%(fingerprints)s::text[])
   AND (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
   AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
   AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)
 GROUP BY 1, 2

-- name: console_group_destinations :many
-- Where the newest `per_group` matching events of each shown error group died (console_error_groups
-- counts event types only: the mirror has no destination). Bounded: at most per_group outbox rows
-- a group (by primary key), never a join over every dead event; exact for a group no larger.
-- NULL: died before migration 0007, or of a lease that expired.
SELECT g.fingerprint, s.destination, count(*) AS count
  FROM unnest(%(fingerprints)s::text[]) AS g(fingerprint)
 CROSS JOIN LATERAL (
    SELECT e.destination
      FROM outbox_dead_fingerprint f
      JOIN outbox_event e ON e.id = f.event_id AND e.status = 'dead'
     WHERE f.fingerprint = g.fingerprint
       AND (%(event_type)s::text IS NULL OR f.event_type = %(event_type)s::text)
       AND (%(aggregate_type)s::text IS NULL OR f.aggregate_type = %(aggregate_type)s::text)
       AND (%(since)s::timestamptz IS NULL OR f.dead_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR f.dead_at < %(until)s::timestamptz)
       AND (%(error_like)s::text IS NULL OR e.last_error ILIKE %(error_like)s::text)
       AND (%(destination)s::text IS NULL OR e.destination = %(destination)s::text)
     ORDER BY f.event_id DESC
     LIMIT %(per_group)s
 ) s
 GROUP BY 1, 2

-- name: console_errors_of :many
-- The last error of each given event (the example of each error group).
SELECT id, last_error FROM outbox_event WHERE id = ANY(%(ids)s::bigint[])

-- name: console_dead_count_capped :one
-- How many dead events match, counting no further than cap + 1 (a page says "more than cap"):
-- a list page stays fast on a million rows; dry runs before an action count exactly (dead_count).
SELECT count(*) FROM (
    SELECT 1
      FROM outbox_event e
     WHERE e.status = 'dead'
       -- include: dead_event_filter
     LIMIT %(cap)s + 1
) capped

-- name: console_event_audit :many
-- The audit entries that name one event, newest first (retries, batches, edits).
SELECT id, started_at, updated_at, finished_at, db_role, actor, action, event_ids, filter,
       affected, outcome, details
  FROM outbox_dead_letter_audit
 WHERE event_ids @> ARRAY[%(id)s::bigint]
 ORDER BY id DESC
 LIMIT %(limit)s

-- name: console_payload_replace :one
-- Replace a dead event's payload (the edit of "edit and redrive"); returns the payload it had.
-- Only a dead event changes: the row is locked, so a concurrent redrive waits for this one.
WITH old AS (
    SELECT e.id, e.payload
      FROM outbox_event e
     WHERE e.id = %(id)s AND e.status = 'dead'
       FOR UPDATE
)
UPDATE outbox_event e
   SET payload = %(payload)s::jsonb, payload_sha256 = outbox_payload_sha256(%(payload)s::jsonb),
       updated_at = now()
  FROM old
 WHERE e.id = old.id AND e.status = 'dead'
RETURNING old.payload AS before

-- name: console_rates :one
-- The newest id (what was published: ids only grow) and the events done in the last `window`
-- seconds (outbox_event_done_at_idx), for the monitor's rates in and out.
SELECT (SELECT coalesce(max(id), 0) FROM outbox_event) AS max_id,
       (SELECT count(*) FROM outbox_event
         WHERE status = 'done' AND done_at >= now() - make_interval(secs => %(window)s))
           AS done_recently
