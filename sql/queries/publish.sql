-- name: publish_one
-- Insert one event; with an idempotency key already used, insert nothing (see publish_existing).
INSERT INTO outbox_event (
    aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
    priority, max_attempts, next_attempt_at
) VALUES (
    %(aggregate_type)s, %(aggregate_id)s, %(event_type)s, %(payload)s::jsonb, %(headers)s::jsonb,
    %(idempotency_key)s, %(priority)s, %(max_attempts)s, COALESCE(%(available_at)s, now())
)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id

-- name: publish_existing
-- The id of the event that already holds an idempotency key.
SELECT id FROM outbox_event WHERE idempotency_key = %(idempotency_key)s

-- name: publish_many
-- Insert a batch from parallel arrays in one round trip and return one id per input row, in
-- input order: ids are drawn from the sequence up front so that rows skipped by an idempotency
-- conflict map to the existing event (or to an earlier row of the same batch).
WITH input AS (
    SELECT nextval('outbox_event_id_seq'::regclass) AS new_id, t.*
      FROM unnest(
               %(aggregate_type)s::text[], %(aggregate_id)s::text[], %(event_type)s::text[],
               %(payload)s::text[], %(headers)s::text[], %(idempotency_key)s::text[],
               %(priority)s::smallint[], %(max_attempts)s::integer[],
               %(available_at)s::timestamptz[]
           ) WITH ORDINALITY
           AS t(aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
                priority, max_attempts, available_at, ord)
),
existing AS (
    SELECT e.id, e.idempotency_key
      FROM outbox_event e
     WHERE e.idempotency_key IN (SELECT idempotency_key FROM input
                                  WHERE idempotency_key IS NOT NULL)
),
inserted AS (
    INSERT INTO outbox_event (
        id, aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
        priority, max_attempts, next_attempt_at
    ) OVERRIDING SYSTEM VALUE
    SELECT new_id, aggregate_type, aggregate_id, event_type, payload::jsonb, headers::jsonb,
           idempotency_key, priority, max_attempts, COALESCE(available_at, now())
      FROM input
     ORDER BY ord
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, idempotency_key
)
SELECT COALESCE(by_id.id, existing.id, by_key.id) AS id
  FROM input
  LEFT JOIN inserted by_id ON by_id.id = input.new_id
  LEFT JOIN existing ON existing.idempotency_key = input.idempotency_key
  LEFT JOIN inserted by_key ON by_key.idempotency_key = input.idempotency_key
 ORDER BY input.ord
