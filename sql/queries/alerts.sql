-- Alert evaluation (dispatchbox/maintenance/alerts.py).
--
-- Every process on every host runs the evaluator; outbox_alert_state coordinates them. A round
-- for one alert and channel is one transaction: alert_claim takes the row only when nobody
-- holds it and nobody evaluated it within the interval (FOR UPDATE SKIP LOCKED: the others
-- skip, they never queue), the holder measures, sends to the channel if the state says a
-- message is due, and alert_save records what was announced before the lock is released. Times
-- are the database's (now()), never a host's clock.

-- name: alert_ensure :exec
-- Create an alert's state row if it is missing; deaths before now() - lookback are not reported.
INSERT INTO outbox_alert_state (alert, channel, cursor_at)
VALUES (%(alert)s, %(channel)s, now() - make_interval(secs => %(lookback)s))
ON CONFLICT (alert, channel) DO NOTHING

-- name: alert_claim :one
-- Lock an alert's row if it is free and due for evaluation; no row means someone else has it.
SELECT alert, active, opened_at, resolved_at, last_sent_at, last_value, cursor_at,
       now() AS now
  FROM outbox_alert_state
 WHERE alert = %(alert)s AND channel = %(channel)s
   AND (evaluated_at IS NULL
        OR evaluated_at <= now() - make_interval(secs => %(interval)s))
   FOR UPDATE SKIP LOCKED

-- name: alert_save :exec
-- Record an evaluation: the new incident state and whether a message went out or failed.
UPDATE outbox_alert_state
   SET active = %(active)s,
       opened_at = %(opened_at)s,
       resolved_at = %(resolved_at)s,
       last_sent_at = %(last_sent_at)s,
       last_value = %(last_value)s,
       cursor_at = %(cursor_at)s,
       evaluated_at = now(),
       evaluated_by = %(evaluated_by)s,
       messages_sent = messages_sent + %(sent)s,
       send_failures = send_failures + %(failed)s,
       last_failure_at = CASE WHEN %(failed)s > 0 THEN now() ELSE last_failure_at END,
       updated_at = now()
 WHERE alert = %(alert)s AND channel = %(channel)s

-- name: alert_dead_count :one
-- How many events are dead now.
SELECT count(*) FROM outbox_event WHERE status = 'dead'

-- name: alert_oldest_dead_age :one
-- Seconds since the oldest dead event died (0 when none is dead); outbox_event_dead_at_idx serves it.
SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(dead_at)), 0)::double precision
  FROM outbox_event
 WHERE status = 'dead'

-- name: alert_oldest_pending_age :one
-- Seconds since the oldest due pending event became due (0 when none is due). The first entry of
-- each priority in outbox_event_claim_idx, ten probes: min(next_attempt_at) over the whole index
-- would read every pending entry on every evaluation (the outbox_health view, which does that
-- and counts, took 7.2 s on a backlog of 10,000,000 in bench/big_tables.py).
-- An oldest event not yet due means none is due.
SELECT COALESCE(GREATEST(0, EXTRACT(EPOCH FROM now() - min(o.next_attempt_at))), 0)
           ::double precision
  FROM generate_series(1, 10) AS p (priority)
 CROSS JOIN LATERAL (SELECT e.next_attempt_at FROM outbox_event e
                      WHERE e.status = 'pending' AND e.priority = p.priority
                      ORDER BY e.next_attempt_at LIMIT 1) o

-- name: alert_new_dead_by_type :many
-- Events that died in (after, upto] and are still dead, per event type, most first.
SELECT e.event_type, count(*) AS count, max(e.dead_at) AS last_dead_at
  FROM outbox_event e
 WHERE e.status = 'dead'
   AND e.dead_at > %(after)s AND e.dead_at <= %(upto)s
 GROUP BY e.event_type
 ORDER BY count DESC, e.event_type

-- name: alert_new_dead_errors :many
-- The same deaths per error fingerprint: the most frequent groups, each with its masked error
-- (never the raw text: values are masked) and the first ids to retry.
SELECT g.fingerprint, g.count, g.ids, outbox_error_signature(x.last_error) AS signature
  FROM (SELECT f.fingerprint, count(*) AS count,
               (array_agg(e.id ORDER BY e.id))[1:%(max_ids)s] AS ids
          FROM outbox_event e
          JOIN outbox_dead_fingerprint f ON f.event_id = e.id
         WHERE e.status = 'dead'
           AND e.dead_at > %(after)s AND e.dead_at <= %(upto)s
         GROUP BY f.fingerprint
         ORDER BY count DESC, f.fingerprint
         LIMIT %(top)s) g
  JOIN outbox_event x ON x.id = g.ids[1]
 ORDER BY g.count DESC, g.fingerprint
