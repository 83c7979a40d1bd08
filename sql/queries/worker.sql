-- name: worker_claim :many
-- Claim up to %(limit)s due pending events in priority order: running, one attempt counted,
-- leased to %(worker)s under %(token)s until now() + lease. Time is the database's.
-- The locked ids go through an array so that the update is a primary-key lookup per id (a join
-- with the row-locking subquery itself lets the planner hash the whole table), walked in the
-- array's order with its position: rows come back in claim order (most urgent first) without
-- a sort of the returned rows, which cost the server a tenth of the claim. The worker orders by
-- position all the same (a no-op on ordered input), so a different plan cannot reorder them.
-- Columns: the fields of dispatchbox.worker.store.Claimed but its token, in order.
UPDATE outbox_event e
   SET status = 'running',
       attempts = e.attempts + 1,
       locked_by = %(worker)s,
       locked_until = now() + make_interval(secs => %(lease_seconds)s),
       lease_token = %(token)s,
       updated_at = now()
  FROM unnest(ARRAY(
           SELECT id
             FROM outbox_event
            WHERE status = 'pending' AND next_attempt_at <= now()
              -- Delivery controls (dispatchbox/delivery): event types of destinations whose
              -- breaker is not closed stay pending, attempts untouched; rate-limited ones are
              -- claimed by delivery_claim against their token bucket. Usually an empty array.
              AND event_type <> ALL (%(excluded_types)s::text[])
            ORDER BY priority, next_attempt_at, id
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED)) WITH ORDINALITY AS claimed (id, position)
 WHERE e.id = claimed.id
RETURNING e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload::text AS payload,
          e.headers::text AS headers, e.attempts, e.created_at, claimed.position, e.priority,
          (extract(epoch FROM e.next_attempt_at) * 1000000)::bigint AS next_attempt_us,
          e.expires_at, e.crash_attempts

-- name: worker_claim_after :many
-- worker_claim, resumed per priority after the last event this process claimed at that
-- priority (%(after_us)s, the place's next_attempt_at in microseconds since the epoch, and
-- %(after_ids)s: ten entries, priority 1 first; NULL where none). The claims return that time as
-- a number: decoding a timestamp with its time zone for every claimed event cost the worker
-- 2,000 more instructions per event (37,900 against 35,900, python -m bench.instructions).
-- Why: every claimed event leaves a dead entry at the front of the claim index, and while any
-- transaction holds an old snapshot, cleanup cannot remove them, so a claim from the index's
-- start walks all of them (measured: 15 ms per claim after 150,000 events, 0.14 ms resumed).
-- One index descent per priority, in priority order, stops as soon as the limit is met. Events
-- behind a position (a transaction that committed late, a release at shutdown) are left to the
-- next worker_claim, which the worker runs every so often (dispatchbox/worker/claim_position.py).
-- Columns: as worker_claim.
UPDATE outbox_event e
   SET status = 'running',
       attempts = e.attempts + 1,
       locked_by = %(worker)s,
       locked_until = now() + make_interval(secs => %(lease_seconds)s),
       lease_token = %(token)s,
       updated_at = now()
  FROM unnest(ARRAY(
           SELECT c.id
             FROM unnest(%(after_us)s::bigint[], %(after_ids)s::bigint[])
                  WITH ORDINALITY AS f (after_us, after_id, priority)
            CROSS JOIN LATERAL (
                  SELECT id
                    FROM outbox_event
                   WHERE status = 'pending' AND next_attempt_at <= now()
                     AND priority = f.priority::smallint
                     AND event_type <> ALL (%(excluded_types)s::text[])  -- as worker_claim
                     AND (next_attempt_at, id) > (
                             COALESCE('epoch'::timestamptz + f.after_us * interval '1 microsecond',
                                      '-infinity'),
                             COALESCE(f.after_id, 0))
                   ORDER BY next_attempt_at, id
                   LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED) c
            LIMIT %(limit)s)) WITH ORDINALITY AS claimed (id, position)
 WHERE e.id = claimed.id
RETURNING e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload::text AS payload,
          e.headers::text AS headers, e.attempts, e.created_at, claimed.position, e.priority,
          (extract(epoch FROM e.next_attempt_at) * 1000000)::bigint AS next_attempt_us,
          e.expires_at, e.crash_attempts

-- name: worker_complete :exec
-- Mark delivered events done where one of our leases still holds.
-- The ids go through ARRAY(SELECT unnest(...)) so that the planner, not knowing the array's
-- length, always reads them by primary key: with a literal array of 1,000 ids it would rather
-- hash a seq scan of the table, and given a status = 'running' filter it would drive a nested
-- loop from the partial lease index on stale statistics. A lease token is only ever set on a
-- running row (CHECK outbox_event_lease_consistent), so matching it is the state guard.
-- Tokens are matched as a set (the tokens of this flush) rather than pairwise: they are random
-- per claim and only this process knows them, so no other worker's lease can match; the only
-- difference from a pairwise check is an event this same process claimed twice (its first
-- lease expired) with both outcomes in one flush, and then "done" is true of one of the runs.
UPDATE outbox_event e
   SET status = 'done',
       done_at = now(),
       updated_at = now(),
       locked_by = NULL,
       locked_until = NULL,
       lease_token = NULL
 WHERE e.id = ANY (ARRAY(SELECT unnest(%(ids)s::bigint[])))
   AND e.lease_token = ANY (ARRAY(SELECT DISTINCT unnest(%(tokens)s::uuid[])))

-- name: worker_fail :many
-- Record failed attempts: error history, last_error, then back to pending after the backoff
-- (%(delays)s seconds from now) or dead at max_attempts or when permanent. A handler's start and
-- end arrive as seconds before this statement (the worker measures them on its monotonic
-- clock), so the history's times are the database's clock without a clock read per claim.
-- Rows whose lease was taken over are skipped (pairwise id and token: each row carries its own
-- error). The token implies running (see worker_complete); the join is by key, so the planner
-- hashes the input or looks each id up, never loops over the partial lease index. The handler's
-- destination is kept on the row, so dead letters can be listed per destination. Returns every
-- event it moved, with its new status.
WITH f AS (
    SELECT *
      FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(error_types)s::text[],
                  %(messages)s::text[], %(tracebacks)s::text[],
                  %(started_ago)s::double precision[], %(finished_ago)s::double precision[],
                  %(permanent)s::boolean[], %(delays)s::double precision[],
                  %(destinations)s::text[])
           AS f(id, token, error_type, message, traceback, started_ago, finished_ago, permanent,
                delay, destination)
),
upd AS (
    UPDATE outbox_event e
       SET status = CASE WHEN f.permanent OR e.attempts >= e.max_attempts
                         THEN 'dead' ELSE 'pending' END,
           next_attempt_at = CASE WHEN f.permanent OR e.attempts >= e.max_attempts
                                  THEN e.next_attempt_at
                                  ELSE now() + make_interval(secs => f.delay) END,
           dead_at = CASE WHEN f.permanent OR e.attempts >= e.max_attempts
                          THEN now() END,
           last_error = f.error_type || ': ' || f.message,
           last_error_at = now(),
           destination = COALESCE(f.destination, e.destination),
           updated_at = now(),
           locked_by = NULL,
           locked_until = NULL,
           lease_token = NULL
      FROM f
     WHERE e.id = f.id AND e.lease_token = f.token  -- the token implies running
 RETURNING e.id, e.status, e.attempts, e.event_type, e.aggregate_type, e.destination
),
history AS (
    INSERT INTO outbox_event_error (event_id, attempt, worker, started_at, finished_at,
                                    error_type, message, traceback)
    SELECT upd.id, upd.attempts, %(worker)s, now() - make_interval(secs => f.started_ago),
           now() - make_interval(secs => f.finished_ago), f.error_type, f.message, f.traceback
      FROM upd JOIN f ON f.id = upd.id
)
SELECT id, status, attempts, event_type, aggregate_type, NULL::text AS locked_by, destination
  FROM upd

-- name: worker_release :exec
-- Give back claimed events whose handler never started (shutdown): pending again, the attempt
-- the claim counted is taken back. Same key lookups and token guard as worker_complete.
UPDATE outbox_event e
   SET status = 'pending',
       attempts = GREATEST(e.attempts - 1, 0),
       updated_at = now(),
       locked_by = NULL,
       locked_until = NULL,
       lease_token = NULL
 WHERE e.id = ANY (ARRAY(SELECT unnest(%(ids)s::bigint[])))
   AND e.lease_token = ANY (ARRAY(SELECT DISTINCT unnest(%(tokens)s::uuid[])))

-- name: worker_heartbeat :exec
-- Extend the lease of events this process still holds. Same key lookups and token guard as
-- worker_complete.
UPDATE outbox_event e
   SET locked_until = now() + make_interval(secs => %(lease_seconds)s)
 WHERE e.id = ANY (ARRAY(SELECT unnest(%(ids)s::bigint[])))
   AND e.lease_token = ANY (ARRAY(SELECT DISTINCT unnest(%(tokens)s::uuid[])))

-- name: reaper_expire :many
-- Sweep up to %(limit)s running events whose lease expired (their worker died or hung). The lost
-- attempt is a crash, not a handler error: attempts gives back what the claim counted and
-- crash_attempts counts it instead, recorded as "LeaseExpired". At %(max_crashes)s crashes (0:
-- never) the event is poison: dead, "Poison: ...". Otherwise back to pending after a crash
-- backoff with jitter (%(crash_backoff)s seconds, doubling per crash), which also spreads the
-- events a dead process held, so that the siblings of a poison event are not claimed with it
-- again. SKIP LOCKED lets every worker run the reaper without stepping on each other.
WITH expired AS (
    SELECT id, locked_by, locked_until, attempts
      FROM outbox_event
     WHERE status = 'running' AND locked_until < now()
     ORDER BY locked_until
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
),
upd AS (
    UPDATE outbox_event e
       SET status = CASE WHEN %(max_crashes)s > 0 AND e.crash_attempts + 1 >= %(max_crashes)s
                         THEN 'dead' ELSE 'pending' END,
           attempts = GREATEST(e.attempts - 1, 0),
           crash_attempts = e.crash_attempts + 1,
           next_attempt_at = now() + make_interval(
               secs => %(crash_backoff)s * power(2, LEAST(e.crash_attempts, 10)) * random()),
           dead_at = CASE WHEN %(max_crashes)s > 0 AND e.crash_attempts + 1 >= %(max_crashes)s
                          THEN now() END,
           last_error = CASE WHEN %(max_crashes)s > 0 AND e.crash_attempts + 1 >= %(max_crashes)s
                             THEN 'Poison: the handler''s worker died ' || (e.crash_attempts + 1)
                                  || ' times while running this event (last lease held by '
                                  || COALESCE(x.locked_by, '?') || ')'
                             ELSE 'LeaseExpired: lease held by ' || COALESCE(x.locked_by, '?')
                                  || ' expired at ' || x.locked_until::text END,
           last_error_at = now(),
           updated_at = now(),
           locked_by = NULL,
           locked_until = NULL,
           lease_token = NULL
      FROM expired x
     WHERE e.id = x.id
 RETURNING e.id, e.status, x.attempts, e.event_type, e.aggregate_type, x.locked_by,
           x.locked_until, e.crash_attempts, e.destination
),
history AS (
    INSERT INTO outbox_event_error (event_id, attempt, worker, started_at, finished_at,
                                    error_type, message)
    SELECT id, attempts, locked_by, NULL, now(),
           CASE WHEN status = 'dead' THEN 'Poison' ELSE 'LeaseExpired' END,
           'lease held by ' || COALESCE(locked_by, '?') || ' expired at ' || locked_until::text
           || ' (crash ' || crash_attempts || ')'
      FROM upd
)
SELECT id, status, attempts, event_type, aggregate_type, locked_by, destination FROM upd

-- name: worker_session_utc :exec
-- Timestamps in UTC on the worker's connections (why: dispatchbox/worker/process.py, Connection).
SET TimeZone TO 'UTC'

-- name: worker_listen :exec
-- Subscribe to the insert trigger's wake-up notifications.
LISTEN dispatchbox_outbox
