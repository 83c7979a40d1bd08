-- Delivery controls per destination: circuit breakers, rate limits, replay (dispatchbox/delivery).
--
-- outbox_breaker and outbox_rate_limit hold one row per destination, shared by every worker on
-- every host. Workers count outcomes with one statement per flush (breaker_record), read the
-- states every fraction of a second (breaker_states), take the half-open probe with a lease
-- (breaker_take_probe) and take rate-limit tokens in bulk with their claim (delivery_claim).
-- Every transition names the state it expects. Times are the database's.

-- name: breaker_ensure :exec
-- Create a destination's breaker row, or update its policy (a deploy may change it); the state
-- and counters are left as they are.
INSERT INTO outbox_breaker AS b
    (destination, failure_threshold, failure_rate, rate_window_seconds, min_calls,
     cooldown_seconds, max_cooldown_seconds, health_check, replay_dead)
VALUES (%(destination)s, %(failure_threshold)s, %(failure_rate)s, %(rate_window_seconds)s,
        %(min_calls)s, %(cooldown_seconds)s, %(max_cooldown_seconds)s, %(health_check)s,
        %(replay_dead)s)
ON CONFLICT (destination) DO UPDATE
   SET failure_threshold = EXCLUDED.failure_threshold,
       failure_rate = EXCLUDED.failure_rate,
       rate_window_seconds = EXCLUDED.rate_window_seconds,
       min_calls = EXCLUDED.min_calls,
       cooldown_seconds = EXCLUDED.cooldown_seconds,
       max_cooldown_seconds = EXCLUDED.max_cooldown_seconds,
       health_check = EXCLUDED.health_check,
       replay_dead = EXCLUDED.replay_dead,
       updated_at = now()
 WHERE (b.failure_threshold, b.failure_rate, b.rate_window_seconds, b.min_calls,
        b.cooldown_seconds, b.max_cooldown_seconds, b.health_check, b.replay_dead)
       IS DISTINCT FROM
       (EXCLUDED.failure_threshold, EXCLUDED.failure_rate, EXCLUDED.rate_window_seconds,
        EXCLUDED.min_calls, EXCLUDED.cooldown_seconds, EXCLUDED.max_cooldown_seconds,
        EXCLUDED.health_check, EXCLUDED.replay_dead)

-- name: rate_limit_ensure :exec
-- Create or update a destination's token bucket (a new bucket starts full).
INSERT INTO outbox_rate_limit AS r (destination, per_second, burst, tokens)
VALUES (%(destination)s, %(per_second)s, %(burst)s, %(burst)s)
ON CONFLICT (destination) DO UPDATE
   SET per_second = EXCLUDED.per_second,
       burst = EXCLUDED.burst,
       tokens = LEAST(r.tokens, EXCLUDED.burst)
 WHERE (r.per_second, r.burst) IS DISTINCT FROM (EXCLUDED.per_second, EXCLUDED.burst)

-- name: rate_limit_drop :exec
-- Remove the buckets of destinations that no longer have a rate limit.
DELETE FROM outbox_rate_limit WHERE destination = ANY(%(destinations)s::text[])

-- name: breaker_states :many
-- The breakers of the given destinations, as the worker needs them each refresh.
SELECT destination, state, manual, probe_by, probe_until > now() AS probe_held
  FROM outbox_breaker
 WHERE destination = ANY(%(destinations)s::text[])

-- name: breaker_record :many
-- One flush's outcomes per destination (calls, failures, successes, the last error): counts
-- added, consecutive failures reset by any success, the failure-rate window restarted when it
-- is older than its length; then closed -> open when a threshold is passed, half_open -> open
-- when a probe event failed (cool-down doubled), half_open -> closed when one succeeded. Rows
-- are locked in destination order (no deadlock between flushes of several destinations) and
-- the new values computed from the locked rows, so concurrent flushes add up. Returns every
-- breaker it touched (changed or not: a worker learns of a breaker another opened), with the
-- outage's start.
WITH f AS (
    SELECT *
      FROM unnest(%(destinations)s::text[], %(calls)s::integer[], %(failures)s::integer[],
                  %(successes)s::integer[], %(errors)s::text[])
           AS f(destination, calls, failures, successes, error)
),
locked AS (
    SELECT b.destination, b.state, b.manual, b.failure_threshold, b.failure_rate, b.min_calls,
           b.cooldown_seconds, b.max_cooldown_seconds, b.reopens, b.opened_at,
           b.window_started_at < now() - make_interval(secs => b.rate_window_seconds) AS stale,
           b.window_calls, b.window_failures, b.consecutive_failures,
           f.calls, f.failures, f.successes, f.error
      FROM outbox_breaker b
      JOIN f ON f.destination = b.destination
     ORDER BY b.destination
       FOR UPDATE OF b
),
counted AS (
    SELECT l.*,
           CASE WHEN l.stale THEN l.calls ELSE l.window_calls + l.calls END AS new_calls,
           CASE WHEN l.stale THEN l.failures ELSE l.window_failures + l.failures END
               AS new_failures,
           CASE WHEN l.successes > 0 THEN 0 ELSE l.consecutive_failures + l.failures END
               AS new_consecutive
      FROM locked l
),
decided AS (
    SELECT c.*,
           CASE
               WHEN c.manual THEN c.state
               WHEN c.state = 'closed'
                    AND (c.new_consecutive >= c.failure_threshold
                         OR (c.failure_rate IS NOT NULL AND c.new_calls >= c.min_calls
                             AND c.new_failures >= c.failure_rate * c.new_calls))
                   THEN 'open'
               WHEN c.state = 'half_open' AND c.failures > 0 THEN 'open'
               WHEN c.state = 'half_open' AND c.successes > 0 THEN 'closed'
               ELSE c.state
           END AS new_state
      FROM counted c
)
UPDATE outbox_breaker b
   SET window_started_at = CASE WHEN d.stale OR d.new_state <> d.state THEN now()
                                ELSE b.window_started_at END,
       window_calls = CASE WHEN d.new_state <> d.state THEN 0 ELSE d.new_calls END,
       window_failures = CASE WHEN d.new_state <> d.state THEN 0 ELSE d.new_failures END,
       consecutive_failures = CASE WHEN d.new_state <> d.state THEN 0
                                   ELSE d.new_consecutive END,
       last_error = COALESCE(d.error, b.last_error),
       state = d.new_state,
       opened_at = CASE WHEN d.state = 'closed' AND d.new_state = 'open' THEN now()
                        ELSE b.opened_at END,
       -- a re-open doubles the cool-down, up to its maximum
       open_until = CASE WHEN d.new_state = 'open'
                         THEN now() + make_interval(secs => LEAST(
                             d.max_cooldown_seconds,
                             d.cooldown_seconds * power(2, CASE WHEN d.state = 'half_open'
                                                                THEN d.reopens + 1 ELSE 0 END)))
                         WHEN d.new_state = 'closed' THEN NULL
                         ELSE b.open_until END,
       reopens = CASE WHEN d.state = 'half_open' AND d.new_state = 'open' THEN d.reopens + 1
                      WHEN d.new_state = 'closed' THEN 0
                      ELSE b.reopens END,
       probe_by = CASE WHEN d.new_state <> d.state THEN NULL ELSE b.probe_by END,
       probe_until = CASE WHEN d.new_state <> d.state THEN NULL ELSE b.probe_until END,
       closed_at = CASE WHEN d.new_state = 'closed' AND d.state <> 'closed' THEN now()
                        ELSE b.closed_at END,
       replay_since = CASE WHEN d.new_state = 'closed' AND d.state <> 'closed' AND b.replay_dead
                           THEN b.opened_at - make_interval(secs => b.rate_window_seconds)
                           ELSE b.replay_since END,
       transitions = b.transitions + CASE WHEN d.new_state <> d.state THEN 1 ELSE 0 END,
       changed_at = CASE WHEN d.new_state <> d.state THEN now() ELSE b.changed_at END,
       updated_at = now()
  FROM decided d
 WHERE b.destination = d.destination
RETURNING b.destination, d.state AS old_state, b.state, b.opened_at, b.open_until,
          b.consecutive_failures, b.last_error, b.replay_dead

-- name: breaker_take_probe :many
-- Take the half-open probe of the given destinations whose cool-down is over (or whose probe's
-- holder stopped renewing its lease): one process on one host wins each. An operator's open
-- (manual) is never probed.
UPDATE outbox_breaker
   SET state = 'half_open',
       probe_by = %(worker)s,
       probe_until = now() + make_interval(secs => %(lease_seconds)s),
       transitions = transitions + CASE WHEN state = 'open' THEN 1 ELSE 0 END,
       changed_at = CASE WHEN state = 'open' THEN now() ELSE changed_at END,
       updated_at = now()
 WHERE destination = ANY(%(destinations)s::text[])
   AND NOT manual
   AND ((state = 'open' AND open_until <= now())
        OR (state = 'half_open' AND (probe_until IS NULL OR probe_until <= now())))
RETURNING destination

-- name: breaker_probe_result :many
-- A health check's verdict, from the probe's holder: half_open -> closed, or -> open with the
-- cool-down doubled. Returns the breaker when it moved (nothing when it was no longer half-open
-- or no longer ours: an operator acted, or our lease ran out and another process probed).
UPDATE outbox_breaker b
   SET state = CASE WHEN %(healthy)s THEN 'closed' ELSE 'open' END,
       open_until = CASE WHEN %(healthy)s THEN NULL
                         ELSE now() + make_interval(secs => LEAST(
                             b.max_cooldown_seconds, b.cooldown_seconds * power(2, b.reopens + 1)))
                    END,
       reopens = CASE WHEN %(healthy)s THEN 0 ELSE b.reopens + 1 END,
       last_error = COALESCE(%(error)s, b.last_error),
       consecutive_failures = 0,
       window_started_at = now(),
       window_calls = 0,
       window_failures = 0,
       probe_by = NULL,
       probe_until = NULL,
       closed_at = CASE WHEN %(healthy)s THEN now() ELSE b.closed_at END,
       replay_since = CASE WHEN %(healthy)s AND b.replay_dead
                           THEN b.opened_at - make_interval(secs => b.rate_window_seconds)
                           ELSE b.replay_since END,
       transitions = b.transitions + 1,
       changed_at = now(),
       updated_at = now()
 WHERE b.destination = %(destination)s AND b.state = 'half_open' AND b.probe_by = %(worker)s
RETURNING b.destination, 'half_open'::text AS old_state, b.state, b.opened_at, b.open_until,
          b.consecutive_failures, b.last_error, b.replay_dead

-- name: breaker_list :many
-- Every breaker, for `dispatchbox breakers list`, the API and `db status`.
SELECT b.destination, b.state, b.manual, b.consecutive_failures, b.window_calls,
       b.window_failures, b.failure_threshold, b.failure_rate, b.cooldown_seconds,
       b.max_cooldown_seconds, b.reopens, b.opened_at, b.open_until, b.closed_at,
       b.changed_at, b.transitions, b.last_error, b.health_check, b.replay_dead,
       r.per_second AS rate_limit, r.burst
  FROM outbox_breaker b
  LEFT JOIN outbox_rate_limit r ON r.destination = b.destination
 ORDER BY b.destination

-- name: breaker_lock :one
-- One breaker, locked for an operator's action.
SELECT destination, state, manual, opened_at
  FROM outbox_breaker
 WHERE destination = %(destination)s
   FOR UPDATE

-- name: breaker_open_manual :one
-- An operator opens a breaker: it stays open (no probe) until an operator closes it. An outage
-- already under way keeps its start.
UPDATE outbox_breaker
   SET state = 'open',
       manual = true,
       opened_at = CASE WHEN state = 'closed' THEN now() ELSE opened_at END,
       open_until = NULL,
       probe_by = NULL,
       probe_until = NULL,
       transitions = transitions + CASE WHEN state <> 'open' THEN 1 ELSE 0 END,
       changed_at = now(),
       updated_at = now()
 WHERE destination = %(destination)s AND NOT (state = 'open' AND manual)
RETURNING destination, opened_at

-- name: breaker_close_manual :one
-- An operator closes an open or half-open breaker (as a successful probe would).
UPDATE outbox_breaker
   SET state = 'closed',
       manual = false,
       open_until = NULL,
       reopens = 0,
       consecutive_failures = 0,
       window_started_at = now(),
       window_calls = 0,
       window_failures = 0,
       probe_by = NULL,
       probe_until = NULL,
       closed_at = now(),
       replay_since = CASE WHEN replay_dead
                           THEN opened_at - make_interval(secs => rate_window_seconds)
                           ELSE replay_since END,
       transitions = transitions + 1,
       changed_at = now(),
       updated_at = now()
 WHERE destination = %(destination)s AND state <> 'closed'
RETURNING destination, opened_at, replay_dead

-- name: breaker_reset :exec
-- An operator resets a breaker: closed, counters, growing cool-down and outage forgotten.
UPDATE outbox_breaker
   SET state = 'closed',
       manual = false,
       open_until = NULL,
       opened_at = NULL,
       reopens = 0,
       consecutive_failures = 0,
       window_started_at = now(),
       window_calls = 0,
       window_failures = 0,
       last_error = NULL,
       probe_by = NULL,
       probe_until = NULL,
       transitions = transitions + CASE WHEN state <> 'closed' THEN 1 ELSE 0 END,
       changed_at = CASE WHEN state <> 'closed' THEN now() ELSE changed_at END,
       updated_at = now()
 WHERE destination = %(destination)s
RETURNING destination

-- name: delivery_claim :many
-- Claim up to %(limit)s due pending events of the given event types (one destination) for a
-- rate-limited destination or a half-open probe. With a token bucket for %(destination)s, at most
-- as many as whole tokens are available (refilled at per_second since the last take, up to
-- burst), and the tokens taken are those claimed: one statement per claim, not per event. The
-- bucket row is locked first, so claimers on every host take turns on it. The UPDATE and its
-- RETURNING mirror worker_claim's (keep them in step): the worker reads the same columns.
WITH bucket AS (
    SELECT destination,
           LEAST(burst, tokens + per_second * GREATEST(0, EXTRACT(EPOCH FROM
                 clock_timestamp() - tokens_at))) AS available,
           clock_timestamp() AS at
      FROM outbox_rate_limit
     WHERE destination = %(destination)s
       FOR UPDATE
),
picked AS (
    SELECT id
      FROM outbox_event
     WHERE status = 'pending' AND next_attempt_at <= now()
       AND event_type = ANY(%(event_types)s::text[])
     ORDER BY priority, next_attempt_at, id
     LIMIT LEAST(%(limit)s, COALESCE((SELECT floor(available)::integer FROM bucket), %(limit)s))
       FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE outbox_event e
       SET status = 'running',
           attempts = e.attempts + 1,
           locked_by = %(worker)s,
           locked_until = now() + make_interval(secs => %(lease_seconds)s),
           lease_token = %(token)s,
           updated_at = now()
      FROM unnest(ARRAY(SELECT id FROM picked)) WITH ORDINALITY AS c (id, position)
     WHERE e.id = c.id
    RETURNING e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload::text AS payload,
              e.headers::text AS headers, e.attempts, e.created_at, c.position, e.priority,
              (extract(epoch FROM e.next_attempt_at) * 1000000)::bigint AS next_attempt_us,
              e.expires_at, e.crash_attempts
),
spent AS (
    UPDATE outbox_rate_limit r
       SET tokens = b.available - (SELECT count(*) FROM claimed),
           tokens_at = b.at
      FROM bucket b
     WHERE r.destination = b.destination
)
SELECT * FROM claimed

-- name: breaker_take_replay :many
-- Take the replays due for the given destinations (a breaker with replay_dead closed): one
-- process wins each, and runs it from replay_since to the moment the breaker closed.
UPDATE outbox_breaker b
   SET replay_since = NULL, updated_at = now()
  FROM (SELECT destination, replay_since
          FROM outbox_breaker
         WHERE destination = ANY(%(destinations)s::text[]) AND replay_since IS NOT NULL
           FOR UPDATE SKIP LOCKED) old
 WHERE b.destination = old.destination
RETURNING b.destination, old.replay_since AS since, b.closed_at AS until

-- name: replay_candidates :many
-- Dead events of a destination that died in the outage window, after an id (keyset), with their
-- last error for the transient/permanent classification in Python. The destination is the one
-- the worker recorded with the failure (0007); a death recorded without one (a lease that
-- expired, or a row older than 0007) counts by its event type.
SELECT id, last_error
  FROM outbox_event
 WHERE status = 'dead'
   AND (destination = %(destination)s
        OR (destination IS NULL AND event_type = ANY(%(event_types)s::text[])))
   AND dead_at >= %(since)s AND dead_at <= %(until)s
   AND id > %(after_id)s
 ORDER BY id
 LIMIT %(limit)s

-- name: alert_breaker_open_age :one
-- Seconds the longest-open breaker has been open (0 when none is open or half-open).
SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(opened_at)), 0)::double precision
  FROM outbox_breaker
 WHERE state <> 'closed'

-- name: metrics_breakers :many
-- Each breaker's state and transition count, for the circuit metrics (observability/metrics.py).
SELECT destination, state, transitions
  FROM outbox_breaker
 ORDER BY destination
