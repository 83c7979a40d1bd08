-- The alerts of issue 22 (dispatchbox/maintenance/fingerprint_alert.py): a new error group,
-- and dead-letter inflow against the delivery objective's error budget.

-- name: alert_new_fingerprints :many
-- Error groups first seen in (after, upto] and within the last %(window)s seconds, oldest first,
-- each with its masked error, event type, how many of its events are dead now and one id.
SELECT s.fingerprint, s.first_seen_at, s.event_type, s.example_event_id,
       outbox_error_signature(x.last_error) AS signature,
       (SELECT count(*) FROM outbox_dead_fingerprint f WHERE f.fingerprint = s.fingerprint)
           AS dead
  FROM outbox_error_fingerprint_seen s
  LEFT JOIN outbox_event x ON x.id = s.example_event_id
 WHERE s.first_seen_at > %(after)s AND s.first_seen_at <= %(upto)s
   AND s.first_seen_at > now() - make_interval(secs => %(window)s)
 ORDER BY s.first_seen_at, s.fingerprint
 LIMIT %(top)s

-- name: alert_dead_burn_rate :one
-- The error-budget burn rate of dead letters: of the events that finished (done or dead) in the
-- last %(window)s seconds, the share that went dead, over the budget 1 - %(slo)s. The partial
-- indexes on done_at and dead_at serve both counts.
SELECT CASE WHEN c.dead + c.done = 0 THEN 0::double precision
            ELSE (c.dead::double precision / (c.dead + c.done)) / (1 - %(slo)s::double precision)
       END
  FROM (SELECT (SELECT count(*) FROM outbox_event
                 WHERE status = 'dead' AND dead_at >= now() - make_interval(secs => %(window)s))
                   AS dead,
               (SELECT count(*) FROM outbox_event
                 WHERE status = 'done' AND done_at >= now() - make_interval(secs => %(window)s))
                   AS done) c
