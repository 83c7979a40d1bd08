-- name: publish_one :one
-- Insert one event; with an idempotency key already used, insert nothing (see publish_existing).
INSERT INTO outbox_event (
    aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
    priority, max_attempts, next_attempt_at, expires_at, payload_sha256
) VALUES (
    %(aggregate_type)s, %(aggregate_id)s, %(event_type)s, %(payload)s::jsonb, %(headers)s::jsonb,
    %(idempotency_key)s, %(priority)s, %(max_attempts)s, COALESCE(%(available_at)s, now()),
    %(expires_at)s, %(payload_sha256)s
)
ON CONFLICT DO NOTHING
RETURNING id

-- name: publish_existing :one
-- The id of the event that already holds an idempotency key.
SELECT id FROM outbox_event WHERE idempotency_key = %(idempotency_key)s

-- name: publish_many :many
-- Insert a batch from parallel arrays in one round trip; one row out per input row, in input
-- order: the id drawn for it and whether it was inserted. Rows skipped by an idempotency
-- conflict report inserted = false, and the caller looks their keys up (publish_existing_many).
-- No join between the input and the table: the IN below is a hashed subplan, linear in the
-- batch size.
WITH input AS MATERIALIZED (
    SELECT nextval('outbox_event_id_seq'::regclass) AS new_id, t.*
      FROM unnest(
               %(aggregate_type)s::text[], %(aggregate_id)s::text[], %(event_type)s::text[],
               %(payload)s::text[], %(headers)s::text[], %(idempotency_key)s::text[],
               %(priority)s::smallint[], %(max_attempts)s::integer[],
               %(available_at)s::timestamptz[], %(expires_at)s::timestamptz[],
               %(payload_sha256)s::text[]
           ) WITH ORDINALITY
           AS t(aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
                priority, max_attempts, available_at, expires_at, payload_sha256, ord)
),
inserted AS (
    INSERT INTO outbox_event (
        id, aggregate_type, aggregate_id, event_type, payload, headers, idempotency_key,
        priority, max_attempts, next_attempt_at, expires_at, payload_sha256
    ) OVERRIDING SYSTEM VALUE
    SELECT new_id, aggregate_type, aggregate_id, event_type, payload::jsonb, headers::jsonb,
           idempotency_key, priority, max_attempts, COALESCE(available_at, now()), expires_at,
           payload_sha256
      FROM input
     ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT new_id, new_id IN (SELECT id FROM inserted) AS inserted
  FROM input
 ORDER BY ord

-- name: publish_existing_many :many
-- The ids of the events holding these idempotency keys.
SELECT idempotency_key, id FROM outbox_event WHERE idempotency_key = ANY(%(keys)s::text[])

-- name: publish_reserve_ids :many
-- Draw %(n)s event ids, in order, for a COPY batch.
SELECT nextval('outbox_event_id_seq'::regclass) AS id FROM generate_series(1, %(n)s)

-- name: publish_copy :copy
-- The fast path of publish_many: binary COPY of a batch whose ids were drawn beforehand.
COPY outbox_event (id, aggregate_type, aggregate_id, event_type, payload, headers, priority,
                   max_attempts, payload_sha256, expires_at)
FROM STDIN (FORMAT BINARY)
