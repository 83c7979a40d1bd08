-- Ordering per aggregate, expiry, backpressure and payload checksums (dispatchbox/delivery/:
-- ordering.py, expiry.py, backpressure.py, checksum.py; issue 14 items 4-7, migration 0009).

-- name: ordering_claim_lock :exec
-- Taken in the ordered claim's transaction before the claim: ordered claims run one at a time
-- across every process and host, so each one's snapshot sees what the previous one claimed and
-- no two events of an aggregate can be claimed by two claims at once. Released at commit.
SELECT pg_advisory_xact_lock(hashtext('dispatchbox.ordered_claim'))

-- name: worker_claim_ordered :many
-- worker_claim for a worker with ordered handlers (used only then): events of the event types
-- in %(ordered)s are claimed only at the head of their aggregate: no event of the aggregate (of
-- an ordered type) running, and no earlier one pending (block, park), pending and due or never
-- tried (skip: an earlier event waiting out its backoff is passed), or dead (park). The head
-- test is one probe of outbox_event_aggregate_open_idx per candidate. Other event types are
-- claimed as by worker_claim. Same columns as worker_claim.
UPDATE outbox_event e
   SET status = 'running',
       attempts = e.attempts + 1,
       locked_by = %(worker)s,
       locked_until = now() + make_interval(secs => %(lease_seconds)s),
       lease_token = %(token)s,
       updated_at = now()
  FROM unnest(ARRAY(
           SELECT c.id
             FROM outbox_event c
            WHERE c.status = 'pending' AND c.next_attempt_at <= now()
              AND c.event_type <> ALL (%(excluded_types)s::text[])  -- as worker_claim
              AND (c.event_type <> ALL (%(ordered)s::text[])
                   OR NOT EXISTS (
                       SELECT 1
                         FROM outbox_event p
                        WHERE p.aggregate_type = c.aggregate_type
                          AND p.aggregate_id = c.aggregate_id
                          AND p.status <> 'done'
                          AND p.id <> c.id
                          AND p.event_type = ANY (%(ordered)s::text[])
                          AND (p.status = 'running'
                               OR (p.id < c.id
                                   AND ((p.status = 'pending'
                                         AND (c.event_type <> ALL (%(skip)s::text[])
                                              OR p.attempts = 0
                                              OR p.next_attempt_at <= now()))
                                        OR (p.status = 'dead'
                                            AND c.event_type = ANY (%(park)s::text[])))))))
            ORDER BY c.priority, c.next_attempt_at, c.id
            LIMIT %(limit)s
              FOR UPDATE SKIP LOCKED)) WITH ORDINALITY AS claimed (id, position)
 WHERE e.id = claimed.id
RETURNING e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload::text AS payload,
          e.headers::text AS headers, e.attempts, e.created_at, claimed.position, e.priority,
          (extract(epoch FROM e.next_attempt_at) * 1000000)::bigint AS next_attempt_us,
          e.expires_at, e.crash_attempts

-- name: ordering_park :many
-- ordering="park": for each event in %(ids)s that is dead (and not itself parked), the later
-- pending events of its aggregate whose types are in %(park)s go dead too, parked_by naming it,
-- and it is marked holds_parked (its redrive brings them back: trigger outbox_event_unpark).
-- Returns one row per parked event with its blocker.
WITH blocker AS (
    SELECT DISTINCT ON (d.aggregate_type, d.aggregate_id) d.id, d.aggregate_type, d.aggregate_id
      FROM outbox_event d
     WHERE d.id = ANY (%(ids)s::bigint[]) AND d.status = 'dead' AND d.parked_by IS NULL
     ORDER BY d.aggregate_type, d.aggregate_id, d.id
),
parked AS (
    UPDATE outbox_event e
       SET status = 'dead',
           dead_at = now(),
           parked_by = b.id,
           last_error = 'parked: behind dead event ' || b.id || ' of ' || b.aggregate_type
                        || ' ' || b.aggregate_id,
           last_error_at = now(),
           updated_at = now()
      FROM blocker b
     WHERE e.aggregate_type = b.aggregate_type AND e.aggregate_id = b.aggregate_id
       AND e.id > b.id AND e.status = 'pending'
       AND e.event_type = ANY (%(park)s::text[])
    RETURNING e.id, b.id AS blocker
),
marked AS (
    UPDATE outbox_event x SET holds_parked = true
     WHERE x.id IN (SELECT blocker FROM parked) AND x.holds_parked IS NOT TRUE
)
SELECT id, blocker FROM parked ORDER BY id

-- name: ordering_blocked_aggregates :one
-- Aggregates held behind a failing event: a pending event that has failed at least once with a
-- later pending event of the same aggregate, or a dead event holding parked ones (one snapshot
-- of the metrics scrape; reads the backlog's aggregate index).
SELECT (SELECT count(*) FROM (
            SELECT DISTINCT f.aggregate_type, f.aggregate_id
              FROM outbox_event f
             WHERE f.status = 'pending' AND f.attempts > 0
               AND EXISTS (SELECT 1 FROM outbox_event l
                            WHERE l.aggregate_type = f.aggregate_type
                              AND l.aggregate_id = f.aggregate_id
                              AND l.status = 'pending' AND l.id > f.id)) w) AS waiting,
       (SELECT count(*) FROM outbox_event
         WHERE status = 'dead' AND holds_parked) AS parked

-- name: expiry_db_clock :many
-- The database clock, read now and then to judge expiry on the worker without a clock read per
-- event.
SELECT now()

-- name: backlog_refresh :many
-- Recount pending events of the event types in outbox_backlog (those some publisher limits)
-- when the last count is older than %(interval)s seconds and no other process is counting (the
-- try-lock): one scan of the pending rows per interval for the whole cluster, none when no
-- publisher has a limit. Returns how many types it wrote (0: not due, or another process had it).
WITH go AS (
    SELECT 1
     WHERE EXISTS (SELECT 1 FROM outbox_backlog)
       AND (SELECT max(refreshed_at) FROM outbox_backlog)
           < now() - make_interval(secs => %(interval)s)
       AND pg_try_advisory_xact_lock(hashtext('dispatchbox.backlog_refresh'))
),
grouped AS (
    SELECT e.event_type, count(*) AS n
      FROM outbox_event e
     WHERE e.status = 'pending' AND EXISTS (SELECT 1 FROM go)
       AND e.event_type IN (SELECT event_type FROM outbox_backlog)
     GROUP BY e.event_type
),
counted AS (
    SELECT b.event_type, COALESCE(g.n, 0) AS pending
      FROM outbox_backlog b LEFT JOIN grouped g ON g.event_type = b.event_type
     WHERE EXISTS (SELECT 1 FROM go)
),
updated AS (
    UPDATE outbox_backlog b
       SET pending = c.pending, refreshed_at = now()
      FROM counted c
     WHERE b.event_type = c.event_type
    RETURNING b.event_type
)
SELECT count(*) FROM updated

-- name: backlog_register :exec
-- A publisher with a limit for these event types asks the workers to count them (refreshed_at
-- in the past, so the next refresh is due at once).
INSERT INTO outbox_backlog (event_type, pending, refreshed_at)
SELECT t, 0, '-infinity'::timestamptz FROM unnest(%(event_types)s::text[]) AS t
ON CONFLICT (event_type) DO NOTHING

-- name: backlog_read :many
-- The backlog estimate of every event type (0 for a type registered but not counted yet).
SELECT event_type, pending FROM outbox_backlog

-- name: checksum_mismatch_ids :many
-- Of the given events, those whose stored checksum no longer matches their payload (NULL
-- checksums, from before migration 0009, are not reported).
SELECT id
  FROM outbox_event
 WHERE id = ANY (%(ids)s::bigint[])
   AND payload_sha256 IS NOT NULL
   AND payload_sha256 <> outbox_payload_sha256(payload)
 ORDER BY id

-- name: checksum_mismatch_dead :many
-- Dead events matching a dead-event filter whose payload no longer matches its checksum, lowest
-- ids first, at most %(limit)s (reported before a redrive by filter).
SELECT e.id
  FROM outbox_event e
 WHERE e.status = 'dead'
   AND e.payload_sha256 IS NOT NULL
   AND e.payload_sha256 <> outbox_payload_sha256(e.payload)
   -- include: dead_event_filter
 ORDER BY e.id
 LIMIT %(limit)s
