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
