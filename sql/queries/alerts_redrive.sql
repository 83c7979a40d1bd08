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
-- The error-budget burn rate of the delivery objective "%(slo)s of events delivered within
-- %(objective)s seconds": of the events that finished (done or dead) in the last %(window)s
-- seconds, the share that missed it (went dead, or were done more than %(objective)s seconds
-- after created_at, or after its last redrive when it was redriven), over the budget
-- 1 - %(slo)s. Both counts walk only the window's rows: the partial indexes
-- outbox_event_dead_at_idx and outbox_event_done_at_idx (done_at) bound the scans by time, and
-- lateness is read from the rows found (no index on lateness needed).
SELECT CASE WHEN c.dead + c.done = 0 THEN 0::double precision
            ELSE ((c.dead + c.late)::double precision / (c.dead + c.done))
                 / (1 - %(slo)s::double precision)
       END
  FROM (SELECT (SELECT count(*) FROM outbox_event
                 WHERE status = 'dead' AND dead_at >= now() - make_interval(secs => %(window)s))
                   AS dead,
               d.done, d.late
          FROM (SELECT count(*) AS done,
                       -- A redriven event's clock starts at its redrive: its death already
                       -- burned the budget once.
                       count(*) FILTER (
                           WHERE done_at > GREATEST(created_at, last_redriven_at)
                                           + make_interval(secs => %(objective)s))
                           AS late
                  FROM outbox_event
                 WHERE status = 'done'
                   AND done_at >= now() - make_interval(secs => %(window)s)) d) c
