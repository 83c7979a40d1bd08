-- Redrive operations (dispatchbox/redrive/): the dry-run plan, the order-preserving batch,
-- canary samples and verdicts, the health of what a paced redrive sent, and `dead-events diff`.
--
-- Queries over a selection of dead events repeat the filter block of dead_letters.sql and add
-- two lines: the operation's cutoff (only events that died before it started, so that events
-- dying meanwhile, the canary's own failures among them, are never promoted) and --max-replays
-- (events redriven that many times already are left dead, so a redrive loop cannot spin).

-- name: redrive_plan_totals :one
-- The selection: how many, how many --max-replays leaves out, oldest and newest death.
SELECT count(*) FILTER (WHERE %(max_replays)s::integer IS NULL
                           OR e.redrive_count < %(max_replays)s::integer) AS total,
       count(*) FILTER (WHERE e.redrive_count >= %(max_replays)s::integer) AS over_replays,
       min(e.dead_at) AS oldest_dead_at, max(e.dead_at) AS newest_dead_at
  FROM outbox_event e
 WHERE e.status = 'dead'
   -- include: dead_event_filter
   AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)


-- name: redrive_plan_groups :many
-- The selection counted per error fingerprint, event type, destination and age bucket, in one
-- scan (GROUPING SETS). The destination is read through to_jsonb(e) so that this query runs
-- before and after the per-destination dead letters add the column (NULL until then).
SELECT CASE WHEN GROUPING(fp.fingerprint) = 0 THEN 'fingerprint'
            WHEN GROUPING(e.event_type) = 0 THEN 'event_type'
            WHEN GROUPING(to_jsonb(e) ->> 'destination') = 0 THEN 'destination'
            ELSE 'age' END AS dimension,
       COALESCE(fp.fingerprint, e.event_type, to_jsonb(e) ->> 'destination',
                CASE WHEN e.dead_at > now() - interval '1 hour' THEN '< 1h'
                     WHEN e.dead_at > now() - interval '1 day' THEN '1h-1d'
                     WHEN e.dead_at > now() - interval '7 days' THEN '1d-7d'
                     ELSE '> 7d' END) AS key,
       count(*) AS count,
       min(outbox_error_signature(e.last_error)) AS signature
  FROM outbox_event e
  LEFT JOIN outbox_dead_fingerprint fp ON fp.event_id = e.id
 WHERE e.status = 'dead'
   -- include: dead_event_filter
   AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)
   AND (%(max_replays)s::integer IS NULL OR e.redrive_count < %(max_replays)s::integer)
 GROUP BY GROUPING SETS (
     (fp.fingerprint), (e.event_type), (to_jsonb(e) ->> 'destination'),
     (CASE WHEN e.dead_at > now() - interval '1 hour' THEN '< 1h'
           WHEN e.dead_at > now() - interval '1 day' THEN '1h-1d'
           WHEN e.dead_at > now() - interval '7 days' THEN '1d-7d'
           ELSE '> 7d' END))
 ORDER BY 1, 3 DESC, 2

-- name: redrive_plan_conflicts :one
-- What a redrive of the selection would run into: an event whose idempotency key a newer event
-- holds (live or archived: the live unique index leaves only archived or re-published holders),
-- an event whose aggregate moved on (a newer event of the same aggregate is done), and an event
-- behind a dead one the selection leaves out (an earlier event of its aggregate stays dead, so
-- the redrive would deliver it first and the earlier one after, whenever that is redriven; the
-- look-up walks outbox_event_aggregate_open_idx). Counts, and the first ids of each. One hash
-- join over the outbox for "moved on", not a lookup per dead event.
WITH sel AS (
    SELECT e.id, e.aggregate_type, e.aggregate_id, e.created_at, e.idempotency_key
      FROM outbox_event e
     WHERE e.status = 'dead'
         -- include: dead_event_filter
         AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)
         AND (%(max_replays)s::integer IS NULL OR e.redrive_count < %(max_replays)s::integer)
),
moved_on AS (
    SELECT s.id
      FROM sel s
      JOIN (SELECT n.aggregate_type, n.aggregate_id, max(n.created_at) AS newest_done
              FROM outbox_event n
             WHERE n.status = 'done'
               AND (n.aggregate_type, n.aggregate_id) IN (SELECT aggregate_type, aggregate_id
                                                            FROM sel)
             GROUP BY 1, 2) d
        ON d.aggregate_type = s.aggregate_type AND d.aggregate_id = s.aggregate_id
     WHERE d.newest_done > s.created_at
),
key_taken AS (
    SELECT s.id
      FROM sel s
     WHERE s.idempotency_key IS NOT NULL
       AND (EXISTS (SELECT 1 FROM outbox_event o
                     WHERE o.idempotency_key = s.idempotency_key AND o.id <> s.id
                       AND o.created_at > s.created_at)
            OR EXISTS (SELECT 1 FROM outbox_event_archive a
                        WHERE a.idempotency_key = s.idempotency_key AND a.id <> s.id
                          AND a.created_at > s.created_at))
),
behind AS (
    SELECT s.id
      FROM sel s
     WHERE EXISTS (SELECT 1 FROM outbox_event p
                    WHERE p.aggregate_type = s.aggregate_type
                      AND p.aggregate_id = s.aggregate_id
                      AND p.status = 'dead' AND p.id < s.id
                      AND NOT EXISTS (SELECT 1 FROM sel x WHERE x.id = p.id))
)
SELECT (SELECT count(*) FROM moved_on) AS moved_on,
       (SELECT (array_agg(id ORDER BY id))[1:%(max_ids)s] FROM moved_on) AS moved_on_ids,
       (SELECT count(*) FROM key_taken) AS key_taken,
       (SELECT (array_agg(id ORDER BY id))[1:%(max_ids)s] FROM key_taken) AS key_taken_ids,
       (SELECT count(*) FROM behind) AS behind,
       (SELECT (array_agg(id ORDER BY id))[1:%(max_ids)s] FROM behind) AS behind_ids,
       (SELECT count(DISTINCT (aggregate_type, aggregate_id)) FROM sel) AS aggregates

-- name: redrive_ordered_batch :one
-- One batch of an order-preserving redrive: the next %(batch_size)s dead events of the selection
-- after %(after_id)s in id order (only those in %(only)s when set, never those in %(exclude)s),
-- back to pending as dead_redrive_ids does, each aggregate's events due in their original order
-- (the outbox sequence, id: the order the ordered claim delivers an aggregate in) one
-- microsecond apart, so that even a claim that orders by due time first keeps it. A row another
-- transaction holds is skipped (SKIP LOCKED), and so are its aggregate's other events in this
-- batch and, through %(held)s (the caller passes back the `held` it got), in the rest of the
-- run: they stay dead rather than overtake it. Fewer picked than asked means nothing matching
-- is left. Returns picked, the ids redriven, last_id and held.
WITH cand AS (
    SELECT e.id, e.aggregate_type, e.aggregate_id
      FROM outbox_event e
     WHERE e.status = 'dead' AND e.id > %(after_id)s::bigint
       AND (%(only)s::bigint[] IS NULL OR e.id = ANY(%(only)s::bigint[]))
       AND (%(exclude)s::bigint[] IS NULL OR e.id <> ALL(%(exclude)s::bigint[]))
         -- include: dead_event_filter
         AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)
         AND (%(max_replays)s::integer IS NULL OR e.redrive_count < %(max_replays)s::integer)
     ORDER BY e.id
     LIMIT %(batch_size)s
),
-- include: redrive_locked_held
picked AS (
    SELECT c.id, c.aggregate_type, c.aggregate_id
      FROM cand c
     WHERE c.id IN (SELECT id FROM locked)
       -- include: redrive_not_held
),
ranked AS (
    SELECT id, row_number() OVER (PARTITION BY aggregate_type, aggregate_id ORDER BY id) AS rank
      FROM picked
),
redriven AS (
    UPDATE outbox_event o
       SET status = 'pending',
           attempts = 0,
           crash_attempts = 0,
           next_attempt_at = now() + make_interval(secs => (r.rank - 1) / 1000000.0),
           locked_by = NULL,
           locked_until = NULL,
           lease_token = NULL,
           dead_at = NULL,
           updated_at = now(),
           redrive_count = o.redrive_count + 1,
           last_redriven_at = now(),
           last_redriven_by = %(actor)s
      FROM ranked r
     WHERE o.id = r.id AND o.status = 'dead'
    RETURNING o.id
),
unmirrored AS (
    DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
)
SELECT (SELECT count(*) FROM cand) AS picked,
       (SELECT COALESCE(array_agg(id ORDER BY id), '{}') FROM redriven) AS ids,
       (SELECT max(id) FROM cand) AS last_id,
       (SELECT COALESCE(array_agg(agg), '{}') FROM held) AS held

-- name: redrive_baseline :one
-- The error fingerprints of the selection: what a canary's failures are compared with.
SELECT COALESCE(array_agg(DISTINCT fp.fingerprint), '{}') AS baseline
  FROM outbox_event e
  JOIN outbox_dead_fingerprint fp ON fp.event_id = e.id
 WHERE e.status = 'dead'
   -- include: dead_event_filter
   AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)
   AND (%(max_replays)s::integer IS NULL OR e.redrive_count < %(max_replays)s::integer)

-- name: redrive_canary_sample :one
-- A canary sample of about %(size)s events: whole aggregates picked at random until the sample
-- holds that many events, so no aggregate is split between the canary and the rest (its events
-- stay in order). Ids in id order.
WITH m AS (
    SELECT e.id, e.aggregate_type, e.aggregate_id
      FROM outbox_event e
     WHERE e.status = 'dead'
         -- include: dead_event_filter
         AND (%(cutoff)s::timestamptz IS NULL OR e.dead_at < %(cutoff)s::timestamptz)
         AND (%(max_replays)s::integer IS NULL OR e.redrive_count < %(max_replays)s::integer)
),
aggs AS (
    SELECT aggregate_type, aggregate_id, count(*) AS n, random() AS r
      FROM m GROUP BY 1, 2
),
chosen AS (
    SELECT aggregate_type, aggregate_id
      FROM (SELECT aggregate_type, aggregate_id, n,
                   sum(n) OVER (ORDER BY r ROWS UNBOUNDED PRECEDING) AS running
              FROM aggs) a
     WHERE running - n < %(size)s
)
SELECT COALESCE(array_agg(m.id ORDER BY m.id), '{}') AS ids
  FROM m JOIN chosen c USING (aggregate_type, aggregate_id)

-- name: redrive_outcome :one
-- How the given redriven events stand: done, dead again, still open (pending or running),
-- gone (archived); the failed attempts recorded since %(since)s, and the 90th percentile of
-- redrive-to-done seconds. The canary's settle check and the paced redrive's health sample.
SELECT count(*) FILTER (WHERE e.status = 'done') AS done,
       count(*) FILTER (WHERE e.status = 'dead') AS dead,
       count(*) FILTER (WHERE e.status IN ('pending', 'running')) AS open,
       cardinality(%(ids)s::bigint[]) - count(*) AS gone,
       (SELECT count(*) FROM outbox_event_error r
         WHERE r.event_id = ANY(%(ids)s::bigint[]) AND r.finished_at >= %(since)s) AS errors,
       percentile_cont(0.9) WITHIN GROUP (
           ORDER BY EXTRACT(EPOCH FROM e.done_at - e.last_redriven_at))
           FILTER (WHERE e.status = 'done') AS p90_seconds
  FROM outbox_event e
 WHERE e.id = ANY(%(ids)s::bigint[])

-- name: redrive_new_fingerprints :many
-- Error groups of the given events' failed attempts since %(since)s that are not in the baseline:
-- the canary's "a new error appeared". Fingerprinted as last_error is (type: message).
SELECT outbox_error_fingerprint(r.error_type || ': ' || r.message) AS fingerprint,
       count(*) AS count, min(r.event_id) AS example_id,
       min(outbox_error_signature(r.error_type || ': ' || r.message)) AS signature
  FROM outbox_event_error r
 WHERE r.event_id = ANY(%(ids)s::bigint[]) AND r.finished_at >= %(since)s
   AND outbox_error_fingerprint(r.error_type || ': ' || r.message) <> ALL(%(baseline)s::text[])
 GROUP BY 1
 ORDER BY 2 DESC

-- name: redrive_op_insert :one
-- Start a redrive operation; returns its id and cutoff (the database's now()).
INSERT INTO outbox_redrive_operation (actor, mode, phase, filter, settings, baseline, audit_id)
VALUES (%(actor)s, %(mode)s, %(phase)s, %(filter)s::jsonb, %(settings)s::jsonb,
        %(baseline)s::text[], %(audit_id)s)
RETURNING id, cutoff

-- name: redrive_op_get :one
-- One operation, locked against a second runner of the same operation (NOWAIT: a clear error).
SELECT id, created_at, updated_at, finished_at, actor, mode, phase, filter, settings, cutoff,
       canary_ids, baseline, after_id, redriven, verdict, reason, audit_id
  FROM outbox_redrive_operation
 WHERE id = %(id)s
   FOR UPDATE NOWAIT

-- name: redrive_op_read :one
-- One operation, unlocked (to show it).
SELECT id, created_at, updated_at, finished_at, actor, mode, phase, filter, settings, cutoff,
       canary_ids, baseline, after_id, redriven, verdict, reason, audit_id
  FROM outbox_redrive_operation
 WHERE id = %(id)s

-- name: redrive_op_list :many
-- The latest operations, newest first.
SELECT id, created_at, updated_at, finished_at, actor, mode, phase, filter, settings, cutoff,
       canary_ids, baseline, after_id, redriven, verdict, reason, audit_id
  FROM outbox_redrive_operation
 ORDER BY id DESC
 LIMIT %(limit)s

-- name: redrive_op_canary :exec
-- Record the canary sample that went out.
UPDATE outbox_redrive_operation
   SET canary_ids = %(ids)s::bigint[], redriven = redriven + %(n)s, updated_at = now()
 WHERE id = %(id)s AND phase = 'canary'

-- name: redrive_op_progress :exec
-- Record one committed promotion batch: where the next starts, how many went.
UPDATE outbox_redrive_operation
   SET after_id = %(after_id)s, redriven = redriven + %(n)s, updated_at = now()
 WHERE id = %(id)s

-- name: redrive_op_phase :exec
-- Move an operation to a phase, with the verdict and the reason when there is one.
UPDATE outbox_redrive_operation
   SET phase = %(phase)s,
       verdict = COALESCE(%(verdict)s::jsonb, verdict),
       reason = COALESCE(%(reason)s, reason),
       finished_at = CASE WHEN %(phase)s IN ('completed', 'stopped') THEN now() END,
       updated_at = now()
 WHERE id = %(id)s

-- name: redrive_db_now :one
-- The database clock.
SELECT now()

-- name: dead_diff :many
-- Error groups against a moment (a deploy): per fingerprint ever seen, the dead events before
-- and since %(since)s still dead, first and last seen. The caller names each group new (first
-- seen since), growing (deaths since, seen before), quiet (dead events, none since) or resolved
-- (seen since %(floor)s, the lookback before the moment, and nothing dead now).
SELECT s.fingerprint, s.first_seen_at, s.last_seen_at, s.event_type,
       COALESCE(d.before, 0) AS before, COALESCE(d.since, 0) AS since,
       COALESCE(d.signature, outbox_error_signature(x.last_error)) AS signature
  FROM outbox_error_fingerprint_seen s
  LEFT JOIN (SELECT f.fingerprint,
                    count(*) FILTER (WHERE f.dead_at < %(since)s) AS before,
                    count(*) FILTER (WHERE f.dead_at >= %(since)s) AS since,
                    min(outbox_error_signature(e.last_error)) AS signature
               FROM outbox_dead_fingerprint f
               JOIN outbox_event e ON e.id = f.event_id
              GROUP BY f.fingerprint) d ON d.fingerprint = s.fingerprint
  LEFT JOIN outbox_event x ON x.id = s.example_event_id
 WHERE d.fingerprint IS NOT NULL
    OR s.last_seen_at >= %(floor)s::timestamptz
 ORDER BY COALESCE(d.since, 0) DESC, s.fingerprint

-- name: redrive_op_try_lock :one
-- Session lock on one operation, so that two runners (a CLI --resume and the API) never drive
-- it at once; false when someone else holds it.
SELECT pg_try_advisory_lock(hashtext('dispatchbox.redrive_operation'), %(id)s::integer)

-- name: redrive_op_unlock :one
-- Release the operation's session lock.
SELECT pg_advisory_unlock(hashtext('dispatchbox.redrive_operation'), %(id)s::integer)

-- name: redrive_audit_reopen :exec
-- A resumed operation goes on in its audit row: in progress again.
UPDATE outbox_dead_letter_audit
   SET outcome = 'in_progress', finished_at = NULL, updated_at = now()
 WHERE id = %(id)s

-- name: redrive_plain_batch :one
-- One batch of the plain redrive by filter (retry-batch --all-matching, the API's and the
-- console's retry by filter): the next %(batch_size)s matching dead events after %(after_id)s in
-- id order, back to pending as dead_redrive_ids does, without letting an aggregate's later event
-- overtake an earlier one that stays dead. A picked event another transaction holds (a second
-- redrive, an edit, an archival batch) is skipped, not waited for, and so are its aggregate's
-- other events in this batch and every later one in the rest of the run: the aggregates
-- returned in `held` come back in %(held)s with the next batch. Within a batch the claim takes
-- an aggregate's events in id order (equal due times, then id). picked < batch_size: nothing
-- matching is left.
WITH cand AS (
    SELECT e.id, e.aggregate_type, e.aggregate_id
      FROM outbox_event e
     WHERE e.status = 'dead' AND e.id > %(after_id)s::bigint
       -- include: dead_event_filter
     ORDER BY e.id
     LIMIT %(batch_size)s
),
-- include: redrive_locked_held
redriven AS (
    UPDATE outbox_event o
       SET status = 'pending',
           attempts = 0,
           crash_attempts = 0,
           next_attempt_at = now(),
           locked_by = NULL,
           locked_until = NULL,
           lease_token = NULL,
           dead_at = NULL,
           updated_at = now(),
           redrive_count = o.redrive_count + 1,
           last_redriven_at = now(),
           last_redriven_by = %(actor)s
      FROM cand c
     WHERE o.id = c.id AND o.status = 'dead'
       AND o.id IN (SELECT id FROM locked)
       -- include: redrive_not_held
    RETURNING o.id
),
unmirrored AS (
    DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
)
SELECT (SELECT count(*) FROM cand) AS picked,
       (SELECT count(*) FROM redriven) AS processed,
       (SELECT max(id) FROM cand) AS last_id,
       (SELECT COALESCE(array_agg(agg), '{}') FROM held) AS held
