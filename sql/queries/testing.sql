-- What dispatchbox.testing reads for your tests (dispatchbox/testing.py).

-- name: testing_events :many
-- Events in the outbox in id order, optionally of one type and one status: what a test asserts on.
SELECT e.id, e.aggregate_type, e.aggregate_id, e.event_type, e.payload, e.headers, e.attempts,
       e.created_at
  FROM outbox_event e
 WHERE (%(event_type)s::text IS NULL OR e.event_type = %(event_type)s::text)
   AND (%(status)s::text IS NULL OR e.status = %(status)s::text)
 ORDER BY e.id
