-- 0003_dead_letter_audit: operator audit trail and redrive lineage (issue 4).
--
-- * outbox_error_signature / outbox_error_fingerprint: the normalised form of an error, so that
--   40,000 deaths that differ only by an order id group as one.
-- * outbox_dead_fingerprint: one row per dead event (its fingerprint and the columns stats filter
--   on), kept exact by triggers. Grouping a million dead events by an expression over last_error
--   costs seconds (every row runs the regexes, and PostgreSQL cannot answer an expression from an
--   expression index without the underlying column); this table answers it in one narrow scan.
-- * outbox_event_dead_id_idx: dead rows in id order, for keyset pages, exports and batched
--   redrive that never rescan what they already passed.
-- * outbox_dead_letter_audit: every operator action that changes or exports dead events.

-- The error with its variable parts masked: first line only (at most 500 characters), the
-- exception type ("pkg.ErrorType: ") kept as is, then in the message quoted values -> '?' / "?",
-- UUIDs -> <uuid>, hex (0x.., or 16+ hex digits) -> <hex>, numbers -> <n>, runs of blanks -> one.
-- dispatchbox/fingerprint.py is its Python twin; a test keeps the two in agreement.
CREATE FUNCTION outbox_error_signature(error text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    line   text := left(split_part(error, E'\n', 1), 500);
    prefix text := coalesce(substring(line FROM '^[A-Za-z_][A-Za-z0-9_.]*: '), '');
    rest   text := substr(line, length(prefix) + 1);
BEGIN
    rest := regexp_replace(rest, '''[^'']*''', '''?''', 'g');
    rest := regexp_replace(rest, '"[^"]*"', '"?"', 'g');
    rest := regexp_replace(rest,
        '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}',
        '<uuid>', 'g');
    rest := regexp_replace(rest, '0[xX][0-9a-fA-F]+', '<hex>', 'g');
    rest := regexp_replace(rest, '[0-9a-fA-F]{16,}', '<hex>', 'g');
    rest := regexp_replace(rest, '[0-9]+([.][0-9]+)?', '<n>', 'g');
    rest := regexp_replace(rest, '[ \t\r\f\v]+', ' ', 'g');
    RETURN btrim(prefix || rest, ' ');
END;
$$;

-- A short, stable name for a signature: what `stats --by error` shows and
-- `retry-batch --all-matching --error-fingerprint F` takes.
CREATE FUNCTION outbox_error_fingerprint(error text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT left(md5(outbox_error_signature(error)), 12)
$$;

CREATE TABLE outbox_dead_fingerprint (
    event_id        bigint      PRIMARY KEY,
    fingerprint     text        NOT NULL,
    event_type      text        NOT NULL,
    aggregate_type  text        NOT NULL,
    dead_at         timestamptz
);

COMMENT ON TABLE outbox_dead_fingerprint IS
    'dispatchbox: error fingerprint of every dead outbox_event, kept exact by triggers';

CREATE INDEX outbox_dead_fingerprint_fp_idx
    ON outbox_dead_fingerprint (fingerprint, event_id);

-- Mirror outbox_event's dead rows: enter on death, follow changes while dead, leave on delete
-- (archival) or any other way out of dead. The WHEN clauses keep the worker's hot path (claims,
-- completions of live events) free of any trigger call. A redrive (the only update that raises
-- redrive_count: dead_redrive_ids and dead_redrive_batch in sql/queries/dead_letters.sql) removes
-- its events from the mirror itself, in the same statement and set-based, instead of one trigger
-- call per row: a quarter of the time of redriving a million events.
CREATE FUNCTION outbox_dead_fingerprint_sync() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- NEW is NULL on DELETE and OLD on INSERT: test TG_OP before touching either.
    IF TG_OP = 'DELETE' THEN
        DELETE FROM outbox_dead_fingerprint WHERE event_id = OLD.id;
        RETURN NULL;
    END IF;
    IF NEW.status <> 'dead' THEN
        DELETE FROM outbox_dead_fingerprint WHERE event_id = NEW.id;
        RETURN NULL;
    END IF;
    INSERT INTO outbox_dead_fingerprint
        (event_id, fingerprint, event_type, aggregate_type, dead_at)
    VALUES (NEW.id, coalesce(outbox_error_fingerprint(NEW.last_error), 'none'),
            NEW.event_type, NEW.aggregate_type, NEW.dead_at)
    ON CONFLICT (event_id) DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint,
           event_type = EXCLUDED.event_type,
           aggregate_type = EXCLUDED.aggregate_type,
           dead_at = EXCLUDED.dead_at;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_event_dead_fingerprint_insert
    AFTER INSERT ON outbox_event
    FOR EACH ROW WHEN (NEW.status = 'dead')
    EXECUTE FUNCTION outbox_dead_fingerprint_sync();

CREATE TRIGGER outbox_event_dead_fingerprint_update
    AFTER UPDATE ON outbox_event
    FOR EACH ROW WHEN (
        OLD.redrive_count = NEW.redrive_count
        AND ((OLD.status = 'dead') <> (NEW.status = 'dead')
             OR (NEW.status = 'dead'
                 AND (OLD.last_error, OLD.event_type, OLD.aggregate_type, OLD.dead_at)
                     IS DISTINCT FROM
                     (NEW.last_error, NEW.event_type, NEW.aggregate_type, NEW.dead_at)))
    )
    EXECUTE FUNCTION outbox_dead_fingerprint_sync();

CREATE TRIGGER outbox_event_dead_fingerprint_delete
    AFTER DELETE ON outbox_event
    FOR EACH ROW WHEN (OLD.status = 'dead')
    EXECUTE FUNCTION outbox_dead_fingerprint_sync();

CREATE FUNCTION outbox_dead_fingerprint_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE outbox_dead_fingerprint;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_event_dead_fingerprint_truncate
    AFTER TRUNCATE ON outbox_event
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_dead_fingerprint_truncate();

-- Dead rows in id order: keyset pages (list --after-id), exports and batched redrive.
CREATE INDEX outbox_event_dead_id_idx
    ON outbox_event (id) WHERE status = 'dead';

CREATE TABLE outbox_dead_letter_audit (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    -- a multi-batch action moves this forward with every committed batch
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- NULL while in progress, and forever if the process died mid-way
    finished_at  timestamptz,
    db_role      text        NOT NULL DEFAULT current_user,
    -- the API token's name, or the OS user for the CLI
    actor        text        NOT NULL,
    action       text        NOT NULL
                 CHECK (action IN ('retry', 'retry_batch', 'retry_filter', 'export', 'purge')),
    event_ids    bigint[],
    filter       jsonb,
    -- rows changed or exported, counted in the same transactions that changed them
    affected     bigint      NOT NULL DEFAULT 0 CHECK (affected >= 0),
    outcome      text        NOT NULL DEFAULT 'completed'
                 CHECK (outcome IN ('in_progress', 'completed', 'interrupted')),
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb
);

COMMENT ON TABLE outbox_dead_letter_audit IS
    'dispatchbox: who retried, exported or purged dead events, when, and how many';
