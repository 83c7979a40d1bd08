-- 0009_ordering_expiry_backlog_checksum: per-aggregate ordering, expiry, backpressure and payload
-- checksums (issue 14, items 4-7). Safe on a populated outbox: nullable columns without defaults
-- (no table rewrite), new indexes, a new small table, functions and a narrow trigger.
--
-- * expires_at: publish(..., expires_at=...); an event still undelivered then goes dead with
--   last_error 'expired: ...' and is never delivered late. NULL: never expires (a handler's ttl
--   may still apply, counted from created_at).
-- * payload_sha256: hex SHA-256 of the payload as PostgreSQL writes jsonb as text (what
--   outbox_payload_sha256(payload) computes). Set by publish from this version on; events
--   written before this migration, or by hand with INSERT, keep NULL ("not known"), which no
--   check reports as a mismatch.
-- * parked_by / holds_parked: ordering="park" moves the later events of an aggregate whose event
--   died to dead as well, each naming its blocker in parked_by; the blocker is marked
--   holds_parked, and when it leaves dead (any redrive: by id, batch, filter, SQL function) the
--   trigger below brings its parked events back to pending, in id order for the ordered claim.
-- * outbox_event_aggregate_open_idx: the ordered claim's look-up of an aggregate's earlier
--   events that are not done. Done rows are left out, so the index stays the size of the
--   backlog plus the dead letters.
-- * outbox_backlog: pending events per event type, refreshed by one worker at a time at most
--   every refresh interval, read by publish (through a per-process cache) to refuse events with
--   BacklogFullError when a limit is set: no count(*) per publish.

ALTER TABLE outbox_event ADD COLUMN expires_at timestamptz;
ALTER TABLE outbox_event ADD COLUMN payload_sha256 text;
ALTER TABLE outbox_event ADD COLUMN parked_by bigint;
ALTER TABLE outbox_event ADD COLUMN holds_parked boolean;

COMMENT ON COLUMN outbox_event.expires_at IS
    'undelivered at this time: dead with last_error expired, never delivered late (NULL: never)';
COMMENT ON COLUMN outbox_event.payload_sha256 IS
    'hex SHA-256 of payload::text at publish (outbox_payload_sha256); NULL for older events';
COMMENT ON COLUMN outbox_event.parked_by IS
    'ordering=park: the dead event of the same aggregate this one was parked behind';
COMMENT ON COLUMN outbox_event.holds_parked IS
    'ordering=park: later events of this aggregate are parked behind this dead event';

CREATE INDEX outbox_event_aggregate_open_idx
    ON outbox_event (aggregate_type, aggregate_id, id) WHERE status <> 'done';

CREATE INDEX outbox_event_parked_by_idx
    ON outbox_event (parked_by) WHERE parked_by IS NOT NULL;

-- The checksum's definition, for checks in SQL (exports, redrives, psql) and for any future
-- audited payload edit, which must store the new value with it.
CREATE FUNCTION outbox_payload_sha256(payload jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN encode(sha256(convert_to(payload::text, 'UTF8')), 'hex');

-- Leaving dead, a blocker brings back the events parked behind it. Only rows marked
-- holds_parked call the function: the claim, completions and ordinary redrives never do.
CREATE FUNCTION outbox_unpark() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox_event
       SET status = 'pending',
           next_attempt_at = now(),
           dead_at = NULL,
           updated_at = now()
     WHERE parked_by = NEW.id AND status = 'dead';
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_event_unpark
    AFTER UPDATE ON outbox_event
    FOR EACH ROW WHEN (OLD.holds_parked AND OLD.status = 'dead' AND NEW.status <> 'dead')
    EXECUTE FUNCTION outbox_unpark();

CREATE TABLE outbox_backlog (
    event_type    text        PRIMARY KEY,
    pending       bigint      NOT NULL CHECK (pending >= 0),
    refreshed_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE outbox_backlog IS
    'dispatchbox: pending events per event type, an estimate refreshed by the workers';

-- The archive keeps the new columns (DESIGN: the same columns as the outbox plus archived_at),
-- and archival carries every column the two tables share.
ALTER TABLE outbox_event_archive ADD COLUMN expires_at timestamptz;
ALTER TABLE outbox_event_archive ADD COLUMN payload_sha256 text;
ALTER TABLE outbox_event_archive ADD COLUMN parked_by bigint;
ALTER TABLE outbox_event_archive ADD COLUMN holds_parked boolean;

CREATE OR REPLACE FUNCTION outbox_archive_batch(p_status text, p_cutoff timestamptz, p_batch_size integer)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
    -- Every column the two tables share, so a column added to both later is carried without
    -- redefining this function again.
    cols constant text := (
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = 'outbox_event_archive'::regclass AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname <> 'archived_at'
           AND EXISTS (SELECT 1 FROM pg_attribute o
                        WHERE o.attrelid = 'outbox_event'::regclass AND o.attname = a.attname
                          AND o.attnum > 0 AND NOT o.attisdropped));
BEGIN
    IF p_status IS NULL OR p_status NOT IN ('done', 'dead') THEN
        RAISE EXCEPTION 'outbox_archive_batch: status must be done or dead, not %', p_status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_cutoff IS NULL OR p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'outbox_archive_batch: cutoff must be set and batch_size at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Dynamic SQL so that every batch is planned with its literal state: a generic plan with
    -- the state as a parameter could not use the partial indexes (WHERE status = 'done' ...).
    EXECUTE format($sql$
        WITH batch AS (
            SELECT e.id
              FROM outbox_event e
             WHERE e.status = %1$L AND e.%2$I < $1
             ORDER BY e.%2$I
             LIMIT $2
               FOR UPDATE SKIP LOCKED
        ),
        errors AS (
            DELETE FROM outbox_event_error r
             USING batch b
             WHERE r.event_id = b.id
            RETURNING r.id, r.event_id, r.attempt, r.worker, r.started_at, r.finished_at,
                      r.error_type, r.message, r.traceback
        ),
        errors_archived AS (
            INSERT INTO outbox_event_error_archive (
                id, event_id, attempt, worker, started_at, finished_at, error_type, message,
                traceback
            )
            SELECT id, event_id, attempt, worker, started_at, finished_at, error_type,
                   message, traceback
              FROM errors
        ),
        events AS (
            -- The batch's rows are locked by us, so this re-check cannot fail; it names the
            -- state the delete expects, like every state change of the outbox.
            DELETE FROM outbox_event e
             USING batch b
             WHERE e.id = b.id AND e.status = %1$L
            RETURNING e.*
        ),
        archived AS (
            INSERT INTO outbox_event_archive (%3$s)
            SELECT %3$s FROM events
            RETURNING 1
        )
        SELECT count(*) FROM archived
    $sql$, p_status, p_status || '_at', cols)
    INTO moved
    USING p_cutoff, p_batch_size;
    RETURN moved;
END;
$$;
