-- 0011_redrive_operations: crash attempts apart from error attempts, poison events, redrive
-- operations (canary, paced), the registry of error fingerprints ever seen, and the alerts
-- built on it (issue 22). Every change is safe on a populated table: a column with a constant
-- default or nullable (no rewrite), new tables, and CHECK constraints on small tables.
--
-- * outbox_event.crash_attempts (the archive keeps it too): attempts lost to a worker that died
--   while holding the event (its lease expired). The reaper counts them here instead of in
--   `attempts`, so a crash costs nothing against max_attempts; after `--max-crashes` of them the
--   event is poison and goes to dead (last_error 'Poison: ...'). A redrive resets it (trigger
--   below). Archival carries it as it carries every column of both tables (0009).
-- * outbox_redrive_operation: one row per canary or paced redrive, so that it can be resumed
--   (`retry-batch --resume ID`) and shown, and audited as one operation.
-- * outbox_error_fingerprint_seen: every error fingerprint any dead event ever had, with when it
--   was first and last seen: the "new error group" alert, `dead-events diff`, and the canary's
--   "no new fingerprint" check read it.

ALTER TABLE outbox_event
    ADD COLUMN crash_attempts integer NOT NULL DEFAULT 0
        CONSTRAINT outbox_event_crash_attempts_check CHECK (crash_attempts >= 0);

COMMENT ON COLUMN outbox_event.crash_attempts IS
    'attempts lost to a worker crash (lease expired); not counted in attempts; reset by redrive';

-- A redrive (the only update that raises redrive_count) gives the event a fresh crash budget.
-- WHEN keeps every other update (claims, completions) free of the call.
CREATE FUNCTION outbox_event_redrive_reset_crashes() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    NEW.crash_attempts := 0;
    RETURN NEW;
END;
$$;

CREATE TRIGGER outbox_event_redrive_reset_crashes
    BEFORE UPDATE ON outbox_event
    FOR EACH ROW WHEN (NEW.redrive_count > OLD.redrive_count AND OLD.crash_attempts > 0)
    EXECUTE FUNCTION outbox_event_redrive_reset_crashes();

CREATE TABLE outbox_redrive_operation (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    actor        text        NOT NULL,
    mode         text        NOT NULL CHECK (mode IN ('canary', 'paced')),
    -- canary: the sample is out, waiting for it to settle; promoting: the rest is going out;
    -- completed / stopped (a verdict said no, see reason) / interrupted (resume it)
    phase        text        NOT NULL
                 CHECK (phase IN ('canary', 'promoting', 'completed', 'stopped', 'interrupted')),
    -- the dead-event filter, as DeadEventFilter.to_json() writes it
    filter       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- canary size and success threshold, rate, max replays, wait: what resume reuses
    settings     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    -- the selection is the events matching the filter that died before this moment: events that
    -- die later (the canary's own failures among them) are never promoted
    cutoff       timestamptz NOT NULL DEFAULT now(),
    canary_ids   bigint[],
    -- the error fingerprints of the selection when the operation started
    baseline     text[],
    -- promotion goes in id order; the next batch starts after this id
    after_id     bigint      NOT NULL DEFAULT 0,
    redriven     bigint      NOT NULL DEFAULT 0 CHECK (redriven >= 0),
    verdict      jsonb,
    reason       text,
    audit_id     bigint      REFERENCES outbox_dead_letter_audit (id)
);

COMMENT ON TABLE outbox_redrive_operation IS
    'dispatchbox: canary and paced redrives, resumable; see docs/en/redrive.md';

CREATE TABLE outbox_error_fingerprint_seen (
    fingerprint      text        PRIMARY KEY,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    event_type       text        NOT NULL,
    example_event_id bigint      NOT NULL
);

CREATE INDEX outbox_error_fingerprint_seen_first_idx
    ON outbox_error_fingerprint_seen (first_seen_at);

COMMENT ON TABLE outbox_error_fingerprint_seen IS
    'dispatchbox: every error fingerprint a dead event ever had, first and last seen';

-- Fed from the fingerprint mirror: one statement-level call per mirror insert. last_seen_at
-- moves at most once a minute per group, so that deaths of one group in many workers at once
-- do not queue on its row.
CREATE FUNCTION outbox_error_fingerprint_seen_sync() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_error_fingerprint_seen AS s
        (fingerprint, first_seen_at, last_seen_at, event_type, example_event_id)
    SELECT b.fingerprint, now(), now(), min(b.event_type), min(b.event_id)
      FROM born b
     GROUP BY b.fingerprint
    ON CONFLICT (fingerprint) DO UPDATE
       SET last_seen_at = now()
     WHERE s.last_seen_at < now() - interval '1 minute';
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_dead_fingerprint_seen
    AFTER INSERT ON outbox_dead_fingerprint
    REFERENCING NEW TABLE AS born
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_error_fingerprint_seen_sync();

-- What is dead today was seen, at the latest, when it died.
INSERT INTO outbox_error_fingerprint_seen
    (fingerprint, first_seen_at, last_seen_at, event_type, example_event_id)
SELECT f.fingerprint, COALESCE(min(f.dead_at), now()), COALESCE(max(f.dead_at), now()),
       min(f.event_type), min(f.event_id)
  FROM outbox_dead_fingerprint f
 GROUP BY f.fingerprint;

-- The archive keeps crash_attempts too: outbox_archive_batch (0009) carries every column the
-- two tables share.
ALTER TABLE outbox_event_archive
    ADD COLUMN crash_attempts integer NOT NULL DEFAULT 0;

ALTER TABLE outbox_dead_letter_audit
    DROP CONSTRAINT outbox_dead_letter_audit_action_check,
    ADD CONSTRAINT outbox_dead_letter_audit_action_check
        CHECK (action IN ('retry', 'retry_batch', 'retry_filter', 'export', 'purge',
                          'breaker_open', 'breaker_close', 'breaker_reset', 'replay',
                          'redrive_canary', 'redrive_paced'));

ALTER TABLE outbox_alert_state
    DROP CONSTRAINT outbox_alert_state_alert_check,
    ADD CONSTRAINT outbox_alert_state_alert_check
        CHECK (alert IN ('dead_events', 'dead_count', 'dead_age', 'pending_age',
                         'breaker_open', 'cleanup_held', 'new_fingerprint', 'dead_budget'));
