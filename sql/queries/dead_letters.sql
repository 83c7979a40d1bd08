-- Dead-letter reads, redrive, export and purge (dispatchbox/repository.py).
--
-- Every query that takes a dead-event filter includes the one definition of its WHERE clause,
-- sql/fragments/dead_event_filter.sql, by a line `-- include: dead_event_filter` that the loader
-- (dispatchbox/data/queries.py) replaces with the fragment; tests/unit/test_dead_letter_filters.py
-- checks that no query spells the block out again.

-- name: read_snapshot :exec
-- First statement of a multi-query read (stats, show): one consistent snapshot, no writes.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY

-- name: dead_list :many
-- One page of dead events in id order: OFFSET pages, or keyset pages with after_id.
SELECT e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload, e.headers, e.status,
       e.attempts, e.max_attempts, e.priority, e.last_error, e.last_error_at, e.created_at,
       e.dead_at, e.redrive_count, e.last_redriven_at, e.last_redriven_by, e.destination,
       -- a lookup per row shown: a join would merge from the first id, not from after_id
       (SELECT fp.fingerprint FROM outbox_dead_fingerprint fp WHERE fp.event_id = e.id)
           AS error_fingerprint
  FROM outbox_event e
 WHERE e.status = 'dead'
   AND (%(after_id)s::bigint IS NULL OR e.id > %(after_id)s::bigint)
   -- include: dead_event_filter
 ORDER BY e.id
 LIMIT %(limit)s OFFSET %(offset)s

-- name: dead_count :one
-- How many dead events match the filter.
SELECT count(*)
  FROM outbox_event e
 WHERE e.status = 'dead'
   -- include: dead_event_filter

-- name: dead_stats_totals :one
-- Count, oldest and newest death of the dead events that match the filter.
SELECT count(*) AS total, min(e.dead_at) AS oldest_dead_at, max(e.dead_at) AS newest_dead_at
  FROM outbox_event e
 WHERE e.status = 'dead'
   -- include: dead_event_filter

-- name: dead_stats_by_event_type :many
-- Dead events per event type, most first, with first and last death (migration 0005's function).
SELECT key, count, first_seen, last_seen
  FROM dead_event_stats('event_type', %(event_type)s, %(aggregate_type)s, %(since)s, %(until)s, %(error_contains)s, %(error_fingerprint)s, %(destination)s)

-- name: dead_stats_by_aggregate_type :many
-- Dead events per aggregate type, most first, with first and last death (migration 0005).
SELECT key, count, first_seen, last_seen
  FROM dead_event_stats('aggregate_type', %(event_type)s, %(aggregate_type)s, %(since)s, %(until)s, %(error_contains)s, %(error_fingerprint)s, %(destination)s)

-- name: dead_stats_by_destination :many
-- Dead events per destination (NULL: died before migration 0007, or of a lease that expired
-- before any failure was recorded), most first, with first and last death (migration 0007).
SELECT key, count, first_seen, last_seen
  FROM dead_event_stats('destination', %(event_type)s, %(aggregate_type)s, %(since)s, %(until)s, %(error_contains)s, %(error_fingerprint)s, %(destination)s)

-- name: dead_stats_by_error :many
-- Dead events per error fingerprint, most first: count, first and last death, the lowest event id
-- as an example and that event's normalised error (migration 0005's dead_event_stats).
SELECT key AS fingerprint, count, first_seen, last_seen, example_id, signature, example_error
  FROM dead_event_stats('error', %(event_type)s, %(aggregate_type)s, %(since)s, %(until)s, %(error_contains)s, %(error_fingerprint)s, %(destination)s)

-- name: event_get :one
-- One event in any state, with its error fingerprint when dead.
SELECT e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload, e.headers, e.status,
       e.attempts, e.max_attempts, e.priority, e.idempotency_key, e.next_attempt_at,
       e.locked_by, e.locked_until, e.last_error, e.last_error_at, e.created_at, e.updated_at,
       e.done_at, e.dead_at, e.redrive_count, e.last_redriven_at, e.last_redriven_by,
       e.destination, fp.fingerprint AS error_fingerprint
  FROM outbox_event e
  LEFT JOIN outbox_dead_fingerprint fp ON fp.event_id = e.id
 WHERE e.id = %(id)s

-- name: event_errors :many
-- An event's whole error history, oldest first (it survives redrives).
SELECT id, attempt, worker, started_at, finished_at, error_type, message, traceback
  FROM outbox_event_error
 WHERE event_id = %(id)s
 ORDER BY id

-- name: events_status :many
-- The status of each of the given ids that exists.
SELECT id, status FROM outbox_event WHERE id = ANY(%(ids)s::bigint[])

-- name: dead_redrive_ids :many
-- Redrive the given events that are still dead: back to pending, attempts reset, due now, lease
-- and dead_at cleared, lineage counted; last_error and the error history stay. They leave the
-- fingerprint mirror here (its trigger skips redrives, see migration 0003).
WITH redriven AS (
    UPDATE outbox_event
       SET status = 'pending',
           attempts = 0,
           next_attempt_at = now(),
           locked_by = NULL,
           locked_until = NULL,
           lease_token = NULL,
           dead_at = NULL,
           updated_at = now(),
           redrive_count = redrive_count + 1,
           last_redriven_at = now(),
           last_redriven_by = %(actor)s
     WHERE id = ANY(%(ids)s::bigint[])
       AND status = 'dead'
    RETURNING id
), unmirrored AS (
    DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
)
SELECT id FROM redriven

-- name: dead_redrive_batch :one
-- One batch of a redrive by filter: migration 0005's redrive_dead_events, at most batch_size
-- events after after_id in id order (rows another transaction holds are skipped, not waited for).
-- processed < batch_size means nothing matching is left; last_id is where the next batch starts.
SELECT processed, skipped, failed, last_id
  FROM redrive_dead_events(%(event_type)s, %(aggregate_type)s, %(since)s, %(until)s, %(error_contains)s, %(error_fingerprint)s,
                           max_events => %(batch_size)s, batch_size => %(batch_size)s,
                           actor => %(actor)s, after_id => %(after_id)s,
                           destination => %(destination)s)

-- name: outbox_notify :exec
-- Wake idle workers after a redrive (a hint; they poll anyway).
SELECT pg_notify('dispatchbox_outbox', '')

-- name: export_utc :exec
-- Exports write timestamps in UTC, whatever the session's time zone.
SET LOCAL TIME ZONE 'UTC'

-- name: dead_export_json :exec
-- Open the export cursor over dead events as JSON text, one per row, in id order (json and jsonl
-- exports); read with dead_export_fetch inside the same transaction. The object is built by
-- concatenation: json_build_object looks up every argument's type on every row (a third of the
-- export's time); to_json quotes and escapes each value, jsonb::text is JSON already.
-- payload_sha256 is the checksum taken at publish and payload_intact whether the payload still
-- matches it (null when unknown: events from before migration 0009); the id and payload_intact
-- columns beside doc let the repository report mismatches without parsing the documents.
DECLARE dispatchbox_export NO SCROLL CURSOR FOR
SELECT e.id, k.payload_intact,
       '{"id":' || e.id
       || ',"aggregate_type":' || to_json(e.aggregate_type)::text
       || ',"aggregate_id":' || to_json(e.aggregate_id)::text
       || ',"event_type":' || to_json(e.event_type)::text
       || ',"destination":' || coalesce(to_json(e.destination)::text, 'null')
       || ',"status":"dead"'
       || ',"attempts":' || e.attempts
       || ',"max_attempts":' || e.max_attempts
       || ',"priority":' || e.priority
       || ',"idempotency_key":' || coalesce(to_json(e.idempotency_key)::text, 'null')
       || ',"created_at":' || to_json(e.created_at)::text
       || ',"dead_at":' || coalesce(to_json(e.dead_at)::text, 'null')
       || ',"last_error":' || coalesce(to_json(e.last_error)::text, 'null')
       || ',"last_error_at":' || coalesce(to_json(e.last_error_at)::text, 'null')
       || ',"error_fingerprint":' || coalesce(to_json(fp.fingerprint)::text, 'null')
       || ',"redrive_count":' || e.redrive_count
       || ',"last_redriven_at":' || coalesce(to_json(e.last_redriven_at)::text, 'null')
       || ',"last_redriven_by":' || coalesce(to_json(e.last_redriven_by)::text, 'null')
       || ',"headers":' || e.headers::text
       || ',"payload":' || e.payload::text
       || ',"payload_sha256":' || coalesce(to_json(e.payload_sha256)::text, 'null')
       || ',"payload_intact":' || coalesce(k.payload_intact::text, 'null')
       || '}' AS doc
  FROM outbox_event e
  LEFT JOIN outbox_dead_fingerprint fp ON fp.event_id = e.id
 CROSS JOIN LATERAL (SELECT CASE WHEN e.payload_sha256 IS NOT NULL
                                 THEN outbox_payload_sha256(e.payload) = e.payload_sha256
                            END AS payload_intact) k
 WHERE e.status = 'dead'
   -- include: dead_event_filter
 ORDER BY e.id

-- name: dead_export_csv :exec
-- Open the export cursor over dead events as text columns named as in export.CSV_COLUMNS, in id
-- order; timestamps in ISO 8601, payload and headers as JSON text; payload_intact 'true',
-- 'false' or empty (see dead_export_json).
DECLARE dispatchbox_export NO SCROLL CURSOR FOR
SELECT e.id::text AS id,
       e.aggregate_type,
       e.aggregate_id,
       e.event_type,
       e.destination,
       e.status,
       e.attempts::text AS attempts,
       e.max_attempts::text AS max_attempts,
       e.priority::text AS priority,
       e.idempotency_key,
       to_json(e.created_at) #>> '{}' AS created_at,
       to_json(e.dead_at) #>> '{}' AS dead_at,
       e.last_error,
       to_json(e.last_error_at) #>> '{}' AS last_error_at,
       fp.fingerprint AS error_fingerprint,
       e.redrive_count::text AS redrive_count,
       to_json(e.last_redriven_at) #>> '{}' AS last_redriven_at,
       e.last_redriven_by,
       e.headers::text AS headers,
       e.payload::text AS payload,
       e.payload_sha256,
       k.payload_intact::text AS payload_intact
  FROM outbox_event e
  LEFT JOIN outbox_dead_fingerprint fp ON fp.event_id = e.id
 CROSS JOIN LATERAL (SELECT CASE WHEN e.payload_sha256 IS NOT NULL
                                 THEN outbox_payload_sha256(e.payload) = e.payload_sha256
                            END AS payload_intact) k
 WHERE e.status = 'dead'
   -- include: dead_event_filter
 ORDER BY e.id

-- name: dead_export_fetch :many
-- The next chunk of the export cursor: a bounded piece, so an export's memory stays flat.
FETCH FORWARD 5000 FROM dispatchbox_export

-- name: dead_count_older_than :one
-- Dead events matching the filter that died before the cutoff (what purge would move).
SELECT count(*)
  FROM outbox_event e
 WHERE e.status = 'dead'
   AND e.dead_at < %(cutoff)s::timestamptz
   -- include: dead_event_filter

-- name: dead_archive_batch :one
-- One batch of `dead-events purge`, which archives (it never deletes): dead events matching the
-- filter that died before the cutoff move, with their error history, to the archive tables, as
-- outbox_archive_batch('dead', ...) moves them (migration 0002) but narrowed by the filter.
-- Returns how many moved; rows another transaction holds are skipped, so only an empty batch
-- means the end.
WITH batch AS (
    SELECT e.id
      FROM outbox_event e
     WHERE e.status = 'dead'
       AND e.dead_at < %(cutoff)s::timestamptz
       -- include: dead_event_filter
     ORDER BY e.dead_at
     LIMIT %(batch_size)s
       FOR UPDATE SKIP LOCKED
),
errors AS (
    DELETE FROM outbox_event_error r
     USING batch b
     WHERE r.event_id = b.id
    RETURNING r.id, r.event_id, r.attempt, r.worker, r.started_at, r.finished_at, r.error_type,
              r.message, r.traceback
),
errors_archived AS (
    INSERT INTO outbox_event_error_archive (
        id, event_id, attempt, worker, started_at, finished_at, error_type, message, traceback
    )
    SELECT id, event_id, attempt, worker, started_at, finished_at, error_type, message, traceback
      FROM errors
),
events AS (
    DELETE FROM outbox_event e
     USING batch b
     WHERE e.id = b.id AND e.status = 'dead'
    RETURNING e.*
),
archived AS (
    INSERT INTO outbox_event_archive (
        id, aggregate_type, aggregate_id, event_type, payload, headers, status, attempts,
        max_attempts, priority, idempotency_key, next_attempt_at, locked_by, locked_until,
        lease_token, last_error, last_error_at, created_at, updated_at, done_at, dead_at,
        redrive_count, last_redriven_at, last_redriven_by, destination, crash_attempts,
        expires_at, payload_sha256, parked_by, holds_parked
    )
    SELECT id, aggregate_type, aggregate_id, event_type, payload, headers, status, attempts,
           max_attempts, priority, idempotency_key, next_attempt_at, locked_by, locked_until,
           lease_token, last_error, last_error_at, created_at, updated_at, done_at, dead_at,
           redrive_count, last_redriven_at, last_redriven_by, destination, crash_attempts,
           expires_at, payload_sha256, parked_by, holds_parked
      FROM events
    RETURNING 1
)
SELECT count(*) FROM archived

-- Dead-letter reads from the summary of migration 0012 (view outbox_dead_groups: one row per
-- aggregate type, event type, destination and error fingerprint, kept exact by triggers). They
-- read O(groups) rows, not every dead event, and give what the exact queries above give for a
-- filter on event type, aggregate type, destination and fingerprint only; any other filter
-- (time of death, error text) uses the exact queries (DeadEventFilter.summary_serves).

-- name: dead_count_summary :one
-- How many dead events match the filter (summary).
SELECT COALESCE(sum(s.dead_count), 0)::bigint
  FROM outbox_dead_groups s
 WHERE (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
   AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
   AND (%(error_fingerprint)s::text IS NULL OR s.fingerprint = %(error_fingerprint)s::text)
   AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)

-- name: dead_stats_totals_summary :one
-- Count, oldest and newest death of the dead events that match the filter (summary).
SELECT COALESCE(sum(s.dead_count), 0)::bigint AS total, min(s.first_dead_at) AS oldest_dead_at,
       max(s.last_dead_at) AS newest_dead_at
  FROM outbox_dead_groups s
 WHERE (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
   AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
   AND (%(error_fingerprint)s::text IS NULL OR s.fingerprint = %(error_fingerprint)s::text)
   AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)

-- name: dead_stats_grouped_summary :many
-- Dead events per value of the column %(by)s names (event_type, aggregate_type or
-- destination), most first, with first and last death (summary); dead_event_stats's order.
SELECT g.key, g.count, g.first_seen, g.last_seen
  FROM (SELECT CASE %(by)s::text WHEN 'event_type' THEN s.event_type
                                 WHEN 'aggregate_type' THEN s.aggregate_type
                                 ELSE s.destination END AS key,
               sum(s.dead_count)::bigint AS count, min(s.first_dead_at) AS first_seen,
               max(s.last_dead_at) AS last_seen
          FROM outbox_dead_groups s
         WHERE (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
           AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
           AND (%(error_fingerprint)s::text IS NULL
                OR s.fingerprint = %(error_fingerprint)s::text)
           AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)
         GROUP BY 1) g
 ORDER BY g.count DESC, g.key

-- name: dead_stats_by_error_summary :many
-- Dead events per error fingerprint, most first, with first and last death, the lowest matching
-- event id as the example (the first entry of the mirror's fingerprint index that matches) and
-- its normalised error (summary; dead_event_stats('error') gives the same).
SELECT g.fingerprint, g.count, g.first_seen, g.last_seen, x.id AS example_id,
       outbox_error_signature(x.last_error) AS signature, x.last_error AS example_error
  FROM (SELECT s.fingerprint, sum(s.dead_count)::bigint AS count,
               min(s.first_dead_at) AS first_seen, max(s.last_dead_at) AS last_seen
          FROM outbox_dead_groups s
         WHERE (%(event_type)s::text IS NULL OR s.event_type = %(event_type)s::text)
           AND (%(aggregate_type)s::text IS NULL OR s.aggregate_type = %(aggregate_type)s::text)
           AND (%(error_fingerprint)s::text IS NULL
                OR s.fingerprint = %(error_fingerprint)s::text)
           AND (%(destination)s::text IS NULL OR s.destination = %(destination)s::text)
         GROUP BY 1) g
 CROSS JOIN LATERAL (
    SELECT f.event_id FROM outbox_dead_fingerprint f
     WHERE f.fingerprint = g.fingerprint
       AND (%(event_type)s::text IS NULL OR f.event_type = %(event_type)s::text)
       AND (%(aggregate_type)s::text IS NULL OR f.aggregate_type = %(aggregate_type)s::text)
       AND (%(destination)s::text IS NULL OR f.destination = %(destination)s::text)
     ORDER BY f.event_id
     LIMIT 1
 ) ex
  JOIN outbox_event x ON x.id = ex.event_id
 ORDER BY g.count DESC, g.fingerprint
