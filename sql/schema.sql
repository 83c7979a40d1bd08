-- dispatchbox schema: the state after every migration in sql/migrations/ has been applied.
-- tests/migration/test_schema_equivalence.py checks that both give the same catalog.

CREATE TABLE dispatchbox_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox_event (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    event_type       text        NOT NULL CHECK (event_type <> ''),
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'dead')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    priority         smallint    NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
    idempotency_key  text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    locked_until     timestamptz,
    lease_token      uuid,
    last_error       text,
    last_error_at    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    dead_at          timestamptz,
    redrive_count    integer     NOT NULL DEFAULT 0 CHECK (redrive_count >= 0),
    last_redriven_at timestamptz,
    last_redriven_by text,
    -- a row is either leased (running) or not; never half of it
    CONSTRAINT outbox_event_lease_consistent CHECK (
        (status = 'running') = (lease_token IS NOT NULL AND locked_until IS NOT NULL)
    )
) WITH (
    -- Every event is updated at least twice (claim, complete): leave room on the page so
    -- updates can stay on it, and vacuum a high-churn queue table early and often.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

COMMENT ON TABLE outbox_event IS
    'dispatchbox outbox: pending -> running -> done | dead; see docs/en/concepts.md';

CREATE UNIQUE INDEX outbox_event_idempotency_key_uq
    ON outbox_event (idempotency_key) WHERE idempotency_key IS NOT NULL;

-- The claim path: due pending rows in priority order.
CREATE INDEX outbox_event_claim_idx
    ON outbox_event (priority, next_attempt_at, id) WHERE status = 'pending';

-- The reaper: running rows by lease expiry.
CREATE INDEX outbox_event_lease_idx
    ON outbox_event (locked_until) WHERE status = 'running';

-- Dead-letter reads: by time, by event type, by aggregate type.
CREATE INDEX outbox_event_dead_at_idx
    ON outbox_event (dead_at, id) WHERE status = 'dead';
CREATE INDEX outbox_event_dead_event_type_idx
    ON outbox_event (event_type, dead_at) WHERE status = 'dead';
CREATE INDEX outbox_event_dead_aggregate_type_idx
    ON outbox_event (aggregate_type, dead_at) WHERE status = 'dead';

-- Archival: finished rows by age.
CREATE INDEX outbox_event_done_at_idx
    ON outbox_event (done_at) WHERE status = 'done';

-- Every failed attempt, kept across redrives.
CREATE TABLE outbox_event_error (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     bigint      NOT NULL REFERENCES outbox_event (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    worker       text,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    error_type   text        NOT NULL,
    message      text        NOT NULL,
    traceback    text
);

CREATE INDEX outbox_event_error_event_idx ON outbox_event_error (event_id, id);

CREATE TABLE outbox_event_archive (
    id               bigint      PRIMARY KEY,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    headers          jsonb       NOT NULL,
    status           text        NOT NULL,
    attempts         integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    priority         smallint    NOT NULL,
    idempotency_key  text,
    next_attempt_at  timestamptz NOT NULL,
    locked_by        text,
    locked_until     timestamptz,
    lease_token      uuid,
    last_error       text,
    last_error_at    timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    done_at          timestamptz,
    dead_at          timestamptz,
    redrive_count    integer     NOT NULL,
    last_redriven_at timestamptz,
    last_redriven_by text,
    archived_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX outbox_event_archive_archived_at_idx ON outbox_event_archive (archived_at);

-- One notification per inserting statement, with a fixed payload: PostgreSQL folds identical
-- notifications within a transaction, so a publish of 10,000 events sends one. It is a hint to
-- wake idle workers; polling still finds every event if a notification is lost.
CREATE FUNCTION outbox_event_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dispatchbox_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_event_notify_insert
    AFTER INSERT ON outbox_event
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_event_notify();

CREATE VIEW outbox_health AS
SELECT
    (SELECT count(*) FROM outbox_event WHERE status = 'pending') AS pending,
    (SELECT count(*) FROM outbox_event WHERE status = 'running') AS running,
    (SELECT count(*) FROM outbox_event WHERE status = 'dead') AS dead,
    (SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(next_attempt_at)), 0)::double precision
       FROM outbox_event
      WHERE status = 'pending' AND next_attempt_at <= now()) AS oldest_pending_age_seconds,
    (SELECT min(dead_at) FROM outbox_event WHERE status = 'dead') AS oldest_dead_at,
    (SELECT count(*) FROM outbox_event
      WHERE status = 'running' AND locked_until < now()) AS expired_leases;

-- ==== 0002 archival (archive_outbox_events, archive_dead_events, purge_outbox_archive) ====

-- Retention model: a done row leaves the outbox `retention_days` after its done_at, a dead row
-- `dead_retention_days` after its dead_at (its own, longer retention); both move, with their
-- error history, into the archive tables. The archive keeps rows until purge_outbox_archive
-- removes those archived more than `older_than_days` ago. Pending and running rows are never
-- touched. Every batch is one statement (DELETE ... RETURNING feeding INSERT), so an event and
-- its errors move together or not at all, and rows a worker holds locked are skipped, not
-- waited for. See docs/en/archival.md.

-- The error history of archived events: outbox_event_error's columns plus archived_at. The
-- foreign key keeps an archived error attached to its archived event, and purge removes both.
CREATE TABLE outbox_event_error_archive (
    id           bigint      PRIMARY KEY,
    event_id     bigint      NOT NULL REFERENCES outbox_event_archive (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    worker       text,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL,
    error_type   text        NOT NULL,
    message      text        NOT NULL,
    traceback    text,
    archived_at  timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Append-only between purges: vacuum after inserts too (visibility map, freezing) in
    -- small steps rather than one anti-wraparound pass over a large table.
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE INDEX outbox_event_error_archive_event_idx ON outbox_event_error_archive (event_id, id);

COMMENT ON TABLE outbox_event_error_archive IS
    'dispatchbox: error history of archived events; see docs/en/archival.md';

-- The archive is written in bulk by archival and deleted in bulk by purge; it is never updated,
-- so pages stay full (default fillfactor) and vacuum follows the inserts as well as the purges.
ALTER TABLE outbox_event_archive SET (
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

COMMENT ON TABLE outbox_event_archive IS
    'dispatchbox: done and dead events moved out of outbox_event; see docs/en/archival.md';

-- One batch: move at most p_batch_size rows in state p_status ('done' or 'dead') whose done_at
-- (or dead_at) is before p_cutoff, and their error rows, into the archive tables. Rows locked by
-- anyone else are skipped. Returns the number of events moved (0 when nothing is left).
CREATE FUNCTION outbox_archive_batch(p_status text, p_cutoff timestamptz, p_batch_size integer)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
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
            INSERT INTO outbox_event_archive (
                id, aggregate_type, aggregate_id, event_type, payload, headers, status,
                attempts, max_attempts, priority, idempotency_key, next_attempt_at, locked_by,
                locked_until, lease_token, last_error, last_error_at, created_at, updated_at,
                done_at, dead_at, redrive_count, last_redriven_at, last_redriven_by
            )
            SELECT id, aggregate_type, aggregate_id, event_type, payload, headers, status,
                   attempts, max_attempts, priority, idempotency_key, next_attempt_at,
                   locked_by, locked_until, lease_token, last_error, last_error_at, created_at,
                   updated_at, done_at, dead_at, redrive_count, last_redriven_at,
                   last_redriven_by
              FROM events
            RETURNING 1
        )
        SELECT count(*) FROM archived
    $sql$, p_status, p_status || '_at')
    INTO moved
    USING p_cutoff, p_batch_size;
    RETURN moved;
END;
$$;

-- One batch of purge: delete at most p_batch_size archived events archived before p_cutoff;
-- their archived errors go with them (ON DELETE CASCADE). Returns the number of events deleted.
CREATE FUNCTION outbox_archive_purge_batch(p_cutoff timestamptz, p_batch_size integer)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    purged integer;
BEGIN
    IF p_cutoff IS NULL OR p_batch_size IS NULL OR p_batch_size < 1 THEN
        RAISE EXCEPTION 'outbox_archive_purge_batch: cutoff must be set and batch_size at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH batch AS (
        SELECT a.id
          FROM outbox_event_archive a
         WHERE a.archived_at < p_cutoff
         ORDER BY a.archived_at
         LIMIT p_batch_size
           FOR UPDATE SKIP LOCKED
    )
    DELETE FROM outbox_event_archive a
     USING batch b
     WHERE a.id = b.id;
    GET DIAGNOSTICS purged = ROW_COUNT;
    RETURN purged;
END;
$$;

-- The moment `days` days before now: the cutoff of a retention. Rejects negative or NULL days.
CREATE FUNCTION outbox_retention_cutoff(days integer)
    RETURNS timestamptz
    LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF days IS NULL OR days < 0 THEN
        RAISE EXCEPTION 'retention days must be 0 or more, not %', days
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN now() - make_interval(days => days);
END;
$$;

-- Move done rows whose done_at is more than retention_days ago into the archive, batch after
-- batch, and return how many moved. A function runs inside its caller's transaction: each batch
-- is one short statement, but every moved row stays locked until that transaction ends. The
-- pg_cron job therefore CALLs run_outbox_archival, which commits after every batch.
CREATE FUNCTION archive_outbox_events(retention_days integer, batch_size integer DEFAULT 10000)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := outbox_retention_cutoff(retention_days);
    total  bigint := 0;
    n      integer;
BEGIN
    LOOP
        n := outbox_archive_batch('done', cutoff, batch_size);
        EXIT WHEN n = 0;
        total := total + n;
    END LOOP;
    RETURN total;
END;
$$;

-- The same for dead rows, by dead_at and their own (usually longer) retention. Their error
-- history moves with them, so archival never loses why an event died.
CREATE FUNCTION archive_dead_events(retention_days integer, batch_size integer DEFAULT 10000)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := outbox_retention_cutoff(retention_days);
    total  bigint := 0;
    n      integer;
BEGIN
    LOOP
        n := outbox_archive_batch('dead', cutoff, batch_size);
        EXIT WHEN n = 0;
        total := total + n;
    END LOOP;
    RETURN total;
END;
$$;

-- Delete archived events (and their archived errors) archived more than older_than_days ago.
CREATE FUNCTION purge_outbox_archive(older_than_days integer, batch_size integer DEFAULT 10000)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := outbox_retention_cutoff(older_than_days);
    total  bigint := 0;
    n      integer;
BEGIN
    LOOP
        n := outbox_archive_purge_batch(cutoff, batch_size);
        EXIT WHEN n = 0;
        total := total + n;
    END LOOP;
    RETURN total;
END;
$$;

-- What the pg_cron job runs: done rows, then dead rows (skipped when dead_retention_days is
-- NULL), committing after every batch so that no lock and no snapshot outlives one batch, and
-- sleeping pause_seconds between batches so that archival leaves CPU and I/O to the workers.
-- CALL it outside a transaction block. moved_done and moved_dead come back as a result row.
CREATE PROCEDURE run_outbox_archival(
    retention_days integer,
    dead_retention_days integer DEFAULT NULL,
    batch_size integer DEFAULT 10000,
    pause_seconds double precision DEFAULT 0,
    INOUT moved_done bigint DEFAULT NULL,
    INOUT moved_dead bigint DEFAULT NULL
)
    LANGUAGE plpgsql AS $$
DECLARE
    done_cutoff timestamptz := outbox_retention_cutoff(retention_days);
    dead_cutoff timestamptz;
    n           integer;
BEGIN
    IF pause_seconds IS NULL OR pause_seconds < 0 THEN
        RAISE EXCEPTION 'pause_seconds must be 0 or more, not %', pause_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF dead_retention_days IS NOT NULL THEN
        dead_cutoff := outbox_retention_cutoff(dead_retention_days);
    END IF;
    moved_done := 0;
    moved_dead := 0;
    LOOP
        n := outbox_archive_batch('done', done_cutoff, batch_size);
        COMMIT;
        EXIT WHEN n = 0;
        moved_done := moved_done + n;
        PERFORM pg_sleep(pause_seconds);
    END LOOP;
    IF dead_cutoff IS NOT NULL THEN
        LOOP
            n := outbox_archive_batch('dead', dead_cutoff, batch_size);
            COMMIT;
            EXIT WHEN n = 0;
            moved_dead := moved_dead + n;
            PERFORM pg_sleep(pause_seconds);
        END LOOP;
    END IF;
END;
$$;

-- The pg_cron purge job: purge_outbox_archive, committing (and pausing) after every batch.
CREATE PROCEDURE run_outbox_archive_purge(
    older_than_days integer,
    batch_size integer DEFAULT 10000,
    pause_seconds double precision DEFAULT 0,
    INOUT purged bigint DEFAULT NULL
)
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := outbox_retention_cutoff(older_than_days);
    n      integer;
BEGIN
    IF pause_seconds IS NULL OR pause_seconds < 0 THEN
        RAISE EXCEPTION 'pause_seconds must be 0 or more, not %', pause_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    purged := 0;
    LOOP
        n := outbox_archive_purge_batch(cutoff, batch_size);
        COMMIT;
        EXIT WHEN n = 0;
        purged := purged + n;
        PERFORM pg_sleep(pause_seconds);
    END LOOP;
END;
$$;

-- ==== end 0002 ====

-- ==== 0003 dead-letter audit ====

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

-- ==== end 0003 ====

-- ==== 0004 alerting ====
-- * outbox_alert_state: one row per alert kind ('dead_events', 'dead_count', 'pending_age').
--   Every process on every host evaluates alerts; the row is the only state they share. An
--   evaluator takes the row with FOR UPDATE SKIP LOCKED, and only once `evaluated_at` is older
--   than the evaluation interval, so exactly one process decides (and sends) per interval, and
--   the row's columns say what was already announced: one incident, one message.
-- * outbox_event_redriven_idx: events that were ever redriven, by status, so that the metric
--   "redriven events that ended done or dead again" never scans the whole outbox. Partial: an
--   event that was never redriven (almost all of them) adds no index entry.

CREATE TABLE outbox_alert_state (
    alert            text        PRIMARY KEY
                     CHECK (alert IN ('dead_events', 'dead_count', 'pending_age')),
    -- a threshold alert's incident is open (announced, not yet resolved)
    active           boolean     NOT NULL DEFAULT false,
    opened_at        timestamptz,
    resolved_at      timestamptz,
    -- the last message of any kind (firing, resolved, deaths) that reached Slack
    last_sent_at     timestamptz,
    -- the measured value when the incident opened (dead count, oldest pending age in seconds)
    last_value       double precision,
    -- 'dead_events': deaths up to this dead_at were reported (or predate alerting)
    cursor_at        timestamptz,
    -- the last evaluation by any process, and which one (host:pid)
    evaluated_at     timestamptz,
    evaluated_by     text,
    messages_sent    bigint      NOT NULL DEFAULT 0,
    send_failures    bigint      NOT NULL DEFAULT 0,
    last_failure_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE outbox_alert_state IS
    'dispatchbox: alert cooldowns and open incidents, shared by every process on every host';

CREATE INDEX outbox_event_redriven_idx
    ON outbox_event (status) WHERE redrive_count > 0;

-- ==== end 0004 ====

-- ==== 0005 dead_letter_functions ====
-- Dead-letter statistics and a batched redrive as SQL functions (issue 20), so that a DBA runs them from psql or pg_cron without Python. OutboxRepository
-- calls the same functions (sql/queries/dead_letters.sql), and so do the CLI and the HTTP API
-- through it: one implementation.
--
-- * outbox_error_like(text): the ILIKE pattern matching a text literally (%, _ and \ escaped).
-- * dead_event_stats(by, filters...): dead events grouped by 'event_type', 'aggregate_type' or
--   'error' (the fingerprint), most numerous first. Filters are NULL for "any".
--       SELECT * FROM dead_event_stats();
--       SELECT * FROM dead_event_stats('error', event_type => 'order.paid');
-- * redrive_dead_events(filters..., max_events, batch_size, actor, after_id): sends matching
--   dead events back to pending in id order, one batch of at most batch_size rows a statement,
--   and returns one row (processed, skipped, failed, last_id):
--     processed  events redriven;
--     skipped    matching events another transaction held (FOR UPDATE SKIP LOCKED: never
--                waited for), or that stopped being dead between the pick and the update;
--     failed     events of batches whose update raised (the batch is rolled back to its
--                savepoint, a WARNING names the error, the next batch goes on);
--     last_id    the highest id looked at: pass it as after_id to continue from there.
--       SELECT * FROM redrive_dead_events(error_fingerprint => 'ff6ce6a361c0');
--   A call is one transaction: run it with max_events set (e.g. from pg_cron) to keep it short.
--   The redrive is the one of dead_redrive_ids: attempts reset, lease and dead_at cleared,
--   lineage counted, the fingerprint mirror row removed, workers woken with NOTIFY.

CREATE FUNCTION outbox_error_like(contains text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '%' || replace(replace(replace(contains, '\', '\\'), '%', '\%'), '_', '\_') || '%';

CREATE FUNCTION dead_event_stats(
    by                text        DEFAULT 'event_type',
    event_type        text        DEFAULT NULL,
    aggregate_type    text        DEFAULT NULL,
    since             timestamptz DEFAULT NULL,
    until             timestamptz DEFAULT NULL,
    error_contains    text        DEFAULT NULL,
    error_fingerprint text        DEFAULT NULL
) RETURNS TABLE (
    key           text,
    count         bigint,
    first_seen    timestamptz,
    last_seen     timestamptz,
    example_id    bigint,
    signature     text,
    example_error text
)
    LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    -- The filter over outbox_event e; $2..$7 are the arguments after `by`.
    filters constant text := $q$
        e.status = 'dead'
        AND ($1 IS NULL OR e.event_type = $1)
        AND ($2 IS NULL OR e.aggregate_type = $2)
        AND ($3 IS NULL OR e.dead_at >= $3)
        AND ($4 IS NULL OR e.dead_at < $4)
        AND ($5 IS NULL OR e.last_error ILIKE outbox_error_like($5))
        AND ($6 IS NULL OR e.id IN (SELECT f.event_id FROM outbox_dead_fingerprint f
                                     WHERE f.fingerprint = $6))$q$;
BEGIN
    -- EXECUTE: planned with the actual values at every call, never a generic plan.
    IF by IN ('event_type', 'aggregate_type') THEN
        RETURN QUERY EXECUTE format(
            'SELECT e.%1$I, count(*), min(e.dead_at), max(e.dead_at), NULL::bigint, NULL::text,
                    NULL::text
               FROM outbox_event e WHERE %2$s
              GROUP BY e.%1$I ORDER BY 2 DESC, 1', by, filters)
        USING event_type, aggregate_type, since, until, error_contains, error_fingerprint;
    ELSIF by = 'error' THEN
        -- outbox_dead_fingerprint has one narrow row per dead event: group there, and touch
        -- outbox_event only for the examples and, with error_contains, to read last_error.
        RETURN QUERY EXECUTE $q$
            SELECT g.fingerprint, g.n, g.first_seen, g.last_seen, g.example_id,
                   outbox_error_signature(x.last_error), x.last_error
              FROM (SELECT f.fingerprint, count(*) AS n, min(f.dead_at) AS first_seen,
                           max(f.dead_at) AS last_seen, min(f.event_id) AS example_id
                      FROM outbox_dead_fingerprint f
                     WHERE ($1 IS NULL OR f.event_type = $1)
                       AND ($2 IS NULL OR f.aggregate_type = $2)
                       AND ($3 IS NULL OR f.dead_at >= $3)
                       AND ($4 IS NULL OR f.dead_at < $4)
                       AND ($6 IS NULL OR f.fingerprint = $6)
                       AND ($5 IS NULL OR EXISTS (
                               SELECT 1 FROM outbox_event e
                                WHERE e.id = f.event_id
                                  AND e.last_error ILIKE outbox_error_like($5)))
                     GROUP BY f.fingerprint) g
              JOIN outbox_event x ON x.id = g.example_id
             ORDER BY g.n DESC, g.fingerprint$q$
        USING event_type, aggregate_type, since, until, error_contains, error_fingerprint;
    ELSE
        RAISE EXCEPTION 'dead_event_stats: by must be event_type, aggregate_type or error, not %',
            quote_nullable(by)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

COMMENT ON FUNCTION dead_event_stats(text, text, text, timestamptz, timestamptz, text, text) IS
    'dispatchbox: dead events by event_type, aggregate_type or error fingerprint, most first';

CREATE FUNCTION redrive_dead_events(
    event_type        text        DEFAULT NULL,
    aggregate_type    text        DEFAULT NULL,
    since             timestamptz DEFAULT NULL,
    until             timestamptz DEFAULT NULL,
    error_contains    text        DEFAULT NULL,
    error_fingerprint text        DEFAULT NULL,
    max_events        bigint      DEFAULT NULL,
    batch_size        integer     DEFAULT 5000,
    actor             text        DEFAULT NULL,
    after_id          bigint      DEFAULT 0,
    OUT processed     bigint,
    OUT skipped       bigint,
    OUT failed        bigint,
    OUT last_id       bigint
)
    LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    who     constant text := COALESCE(actor, session_user::text);
    wanted  integer;
    ids     bigint[];
    locked  bigint[];
    n       bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'redrive_dead_events: batch_size must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_events IS NOT NULL AND max_events < 0 THEN
        RAISE EXCEPTION 'redrive_dead_events: max_events must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    processed := 0; skipped := 0; failed := 0; last_id := COALESCE(after_id, 0);
    LOOP
        wanted := CASE WHEN max_events IS NULL THEN batch_size
                       ELSE least(batch_size, max_events - processed)::integer END;
        EXIT WHEN wanted <= 0;
        -- The next matching dead ids, unlocked: what is "there" whoever holds it.
        EXECUTE $q$
            SELECT array_agg(id ORDER BY id) FROM (
                SELECT e.id FROM outbox_event e
                 WHERE e.status = 'dead' AND e.id > $7
                   AND ($1 IS NULL OR e.event_type = $1)
                   AND ($2 IS NULL OR e.aggregate_type = $2)
                   AND ($3 IS NULL OR e.dead_at >= $3)
                   AND ($4 IS NULL OR e.dead_at < $4)
                   AND ($5 IS NULL OR e.last_error ILIKE outbox_error_like($5))
                   AND ($6 IS NULL OR e.id IN (SELECT f.event_id FROM outbox_dead_fingerprint f
                                                WHERE f.fingerprint = $6))
                 ORDER BY e.id LIMIT $8) picked$q$
            INTO ids
            USING event_type, aggregate_type, since, until, error_contains, error_fingerprint,
                  last_id, wanted;
        EXIT WHEN ids IS NULL;
        last_id := ids[array_length(ids, 1)];
        BEGIN
            SELECT array_agg(o.id) INTO locked
              FROM (SELECT e.id FROM outbox_event e
                     WHERE e.id = ANY(ids) AND e.status = 'dead'
                       FOR UPDATE SKIP LOCKED) o;
            WITH redriven AS (
                UPDATE outbox_event o
                   SET status = 'pending',
                       attempts = 0,
                       next_attempt_at = now(),
                       locked_by = NULL,
                       locked_until = NULL,
                       lease_token = NULL,
                       dead_at = NULL,
                       updated_at = now(),
                       redrive_count = o.redrive_count + 1,
                       last_redriven_at = now(),
                       last_redriven_by = who
                 WHERE o.id = ANY(COALESCE(locked, '{}')) AND o.status = 'dead'
                RETURNING o.id
            ), unmirrored AS (
                DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
            )
            SELECT count(*) INTO n FROM redriven;
            processed := processed + n;
            skipped := skipped + array_length(ids, 1) - n;
        EXCEPTION WHEN OTHERS THEN
            failed := failed + array_length(ids, 1);
            RAISE WARNING 'redrive_dead_events: batch after id % failed: %',
                ids[1] - 1, SQLERRM;
        END;
    END LOOP;
    IF processed > 0 THEN
        PERFORM pg_notify('dispatchbox_outbox', '');
    END IF;
END
$fn$;

COMMENT ON FUNCTION redrive_dead_events(text, text, timestamptz, timestamptz, text, text, bigint,
                                        integer, text, bigint) IS
    'dispatchbox: redrive matching dead events in batches; returns processed, skipped, failed';

-- ==== end 0005 ====

-- ==== 0006 alert_channels ====
-- Alert state per channel, and the "dead events left unattended" alert (issue 20).
--
-- * outbox_alert_state gets a `channel` ('slack', 'email', 'pagerduty', 'webhook'): each channel
--   keeps its own incident state, cursor and counters, so a channel that fails is retried alone
--   (the others are not sent the same message twice) and one incident is one message per
--   channel. Rows from 0004 become Slack's, which was the only channel then.
-- * A fourth alert, 'dead_age': the oldest dead event died longer ago than a threshold.

ALTER TABLE outbox_alert_state
    ADD COLUMN channel text NOT NULL DEFAULT 'slack'
        CONSTRAINT outbox_alert_state_channel_check
        CHECK (channel IN ('slack', 'email', 'pagerduty', 'webhook'));

ALTER TABLE outbox_alert_state
    DROP CONSTRAINT outbox_alert_state_pkey,
    ADD CONSTRAINT outbox_alert_state_pkey PRIMARY KEY (alert, channel),
    DROP CONSTRAINT outbox_alert_state_alert_check,
    ADD CONSTRAINT outbox_alert_state_alert_check
        CHECK (alert IN ('dead_events', 'dead_count', 'dead_age', 'pending_age'));

COMMENT ON COLUMN outbox_alert_state.channel IS
    'where the messages of this row went: slack, email, pagerduty or webhook';

-- ==== end 0006 ====

-- ==== 0007 destinations ====
-- Dead letters per destination (issue 15).
--
-- * outbox_event.destination: the destination of the handler (or route) whose failure the worker
--   recorded last (worker_fail); NULL until an attempt fails, and for rows older than 0007. The
--   archive keeps it (outbox_event_archive.destination, carried by outbox_archive_batch).
-- * outbox_event_dead_destination_idx: dead rows by destination, for `--destination NAME` and
--   `stats --by destination`.
-- * dead_event_stats and redrive_dead_events (migration 0005) take a `destination` filter as
--   their last argument, and dead_event_stats groups `by => 'destination'`. Nullable columns
--   without a default: adding them rewrites no table.

ALTER TABLE outbox_event ADD COLUMN destination text;
ALTER TABLE outbox_event_archive ADD COLUMN destination text;

COMMENT ON COLUMN outbox_event.destination IS
    'the destination whose delivery failed last (dead letters per destination); NULL before a failure';

CREATE INDEX outbox_event_dead_destination_idx
    ON outbox_event (destination, dead_at) WHERE status = 'dead';

-- Archival carries the destination into outbox_event_archive.
CREATE OR REPLACE FUNCTION outbox_archive_batch(p_status text, p_cutoff timestamptz, p_batch_size integer)
    RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
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
            INSERT INTO outbox_event_archive (
                id, aggregate_type, aggregate_id, event_type, payload, headers, status,
                attempts, max_attempts, priority, idempotency_key, next_attempt_at, locked_by,
                locked_until, lease_token, last_error, last_error_at, created_at, updated_at,
                done_at, dead_at, redrive_count, last_redriven_at, last_redriven_by, destination
            )
            SELECT id, aggregate_type, aggregate_id, event_type, payload, headers, status,
                   attempts, max_attempts, priority, idempotency_key, next_attempt_at,
                   locked_by, locked_until, lease_token, last_error, last_error_at, created_at,
                   updated_at, done_at, dead_at, redrive_count, last_redriven_at,
                   last_redriven_by, destination
              FROM events
            RETURNING 1
        )
        SELECT count(*) FROM archived
    $sql$, p_status, p_status || '_at')
    INTO moved
    USING p_cutoff, p_batch_size;
    RETURN moved;
END;
$$;

-- The 0005 functions with a destination filter: a new argument is a new signature, so the old
-- ones go (callers by name keep working; the new argument comes last, so do positional ones).
DROP FUNCTION dead_event_stats(text, text, text, timestamptz, timestamptz, text, text);
DROP FUNCTION redrive_dead_events(text, text, timestamptz, timestamptz, text, text, bigint,
                                  integer, text, bigint);

CREATE FUNCTION dead_event_stats(
    by                text        DEFAULT 'event_type',
    event_type        text        DEFAULT NULL,
    aggregate_type    text        DEFAULT NULL,
    since             timestamptz DEFAULT NULL,
    until             timestamptz DEFAULT NULL,
    error_contains    text        DEFAULT NULL,
    error_fingerprint text        DEFAULT NULL,
    destination       text        DEFAULT NULL
) RETURNS TABLE (
    key           text,
    count         bigint,
    first_seen    timestamptz,
    last_seen     timestamptz,
    example_id    bigint,
    signature     text,
    example_error text
)
    LANGUAGE plpgsql STABLE
AS $fn$
DECLARE
    -- The filter over outbox_event e; $1..$7 are the arguments after `by`.
    filters constant text := $q$
        e.status = 'dead'
        AND ($1 IS NULL OR e.event_type = $1)
        AND ($2 IS NULL OR e.aggregate_type = $2)
        AND ($3 IS NULL OR e.dead_at >= $3)
        AND ($4 IS NULL OR e.dead_at < $4)
        AND ($5 IS NULL OR e.last_error ILIKE outbox_error_like($5))
        AND ($6 IS NULL OR e.id IN (SELECT f.event_id FROM outbox_dead_fingerprint f
                                     WHERE f.fingerprint = $6))
        AND ($7 IS NULL OR e.destination = $7)$q$;
BEGIN
    -- EXECUTE: planned with the actual values at every call, never a generic plan.
    IF by IN ('event_type', 'aggregate_type', 'destination') THEN
        RETURN QUERY EXECUTE format(
            'SELECT e.%1$I, count(*), min(e.dead_at), max(e.dead_at), NULL::bigint, NULL::text,
                    NULL::text
               FROM outbox_event e WHERE %2$s
              GROUP BY e.%1$I ORDER BY 2 DESC, 1', by, filters)
        USING event_type, aggregate_type, since, until, error_contains, error_fingerprint,
              destination;
    ELSIF by = 'error' THEN
        -- outbox_dead_fingerprint has one narrow row per dead event: group there, and touch
        -- outbox_event only for the examples and, with error_contains, to read last_error.
        RETURN QUERY EXECUTE $q$
            SELECT g.fingerprint, g.n, g.first_seen, g.last_seen, g.example_id,
                   outbox_error_signature(x.last_error), x.last_error
              FROM (SELECT f.fingerprint, count(*) AS n, min(f.dead_at) AS first_seen,
                           max(f.dead_at) AS last_seen, min(f.event_id) AS example_id
                      FROM outbox_dead_fingerprint f
                     WHERE ($1 IS NULL OR f.event_type = $1)
                       AND ($2 IS NULL OR f.aggregate_type = $2)
                       AND ($3 IS NULL OR f.dead_at >= $3)
                       AND ($4 IS NULL OR f.dead_at < $4)
                       AND ($6 IS NULL OR f.fingerprint = $6)
                       AND ($5 IS NULL OR EXISTS (
                               SELECT 1 FROM outbox_event e
                                WHERE e.id = f.event_id
                                  AND e.last_error ILIKE outbox_error_like($5)))
                       AND ($7 IS NULL OR EXISTS (
                               SELECT 1 FROM outbox_event e
                                WHERE e.id = f.event_id AND e.destination = $7))
                     GROUP BY f.fingerprint) g
              JOIN outbox_event x ON x.id = g.example_id
             ORDER BY g.n DESC, g.fingerprint$q$
        USING event_type, aggregate_type, since, until, error_contains, error_fingerprint,
              destination;
    ELSE
        RAISE EXCEPTION
            'dead_event_stats: by must be event_type, aggregate_type, destination or error, not %',
            quote_nullable(by)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

COMMENT ON FUNCTION dead_event_stats(text, text, text, timestamptz, timestamptz, text, text,
                                     text) IS
    'dispatchbox: dead events by event_type, aggregate_type, destination or error fingerprint, most first';

CREATE FUNCTION redrive_dead_events(
    event_type        text        DEFAULT NULL,
    aggregate_type    text        DEFAULT NULL,
    since             timestamptz DEFAULT NULL,
    until             timestamptz DEFAULT NULL,
    error_contains    text        DEFAULT NULL,
    error_fingerprint text        DEFAULT NULL,
    max_events        bigint      DEFAULT NULL,
    batch_size        integer     DEFAULT 5000,
    actor             text        DEFAULT NULL,
    after_id          bigint      DEFAULT 0,
    destination       text        DEFAULT NULL,
    OUT processed     bigint,
    OUT skipped       bigint,
    OUT failed        bigint,
    OUT last_id       bigint
)
    LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    who     constant text := COALESCE(actor, session_user::text);
    wanted  integer;
    ids     bigint[];
    locked  bigint[];
    n       bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'redrive_dead_events: batch_size must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_events IS NOT NULL AND max_events < 0 THEN
        RAISE EXCEPTION 'redrive_dead_events: max_events must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    processed := 0; skipped := 0; failed := 0; last_id := COALESCE(after_id, 0);
    LOOP
        wanted := CASE WHEN max_events IS NULL THEN batch_size
                       ELSE least(batch_size, max_events - processed)::integer END;
        EXIT WHEN wanted <= 0;
        -- The next matching dead ids, unlocked: what is "there" whoever holds it.
        EXECUTE $q$
            SELECT array_agg(id ORDER BY id) FROM (
                SELECT e.id FROM outbox_event e
                 WHERE e.status = 'dead' AND e.id > $7
                   AND ($1 IS NULL OR e.event_type = $1)
                   AND ($2 IS NULL OR e.aggregate_type = $2)
                   AND ($3 IS NULL OR e.dead_at >= $3)
                   AND ($4 IS NULL OR e.dead_at < $4)
                   AND ($5 IS NULL OR e.last_error ILIKE outbox_error_like($5))
                   AND ($6 IS NULL OR e.id IN (SELECT f.event_id FROM outbox_dead_fingerprint f
                                                WHERE f.fingerprint = $6))
                   AND ($9 IS NULL OR e.destination = $9)
                 ORDER BY e.id LIMIT $8) picked$q$
            INTO ids
            USING event_type, aggregate_type, since, until, error_contains, error_fingerprint,
                  last_id, wanted, destination;
        EXIT WHEN ids IS NULL;
        last_id := ids[array_length(ids, 1)];
        BEGIN
            SELECT array_agg(o.id) INTO locked
              FROM (SELECT e.id FROM outbox_event e
                     WHERE e.id = ANY(ids) AND e.status = 'dead'
                       FOR UPDATE SKIP LOCKED) o;
            WITH redriven AS (
                UPDATE outbox_event o
                   SET status = 'pending',
                       attempts = 0,
                       next_attempt_at = now(),
                       locked_by = NULL,
                       locked_until = NULL,
                       lease_token = NULL,
                       dead_at = NULL,
                       updated_at = now(),
                       redrive_count = o.redrive_count + 1,
                       last_redriven_at = now(),
                       last_redriven_by = who
                 WHERE o.id = ANY(COALESCE(locked, '{}')) AND o.status = 'dead'
                RETURNING o.id
            ), unmirrored AS (
                DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
            )
            SELECT count(*) INTO n FROM redriven;
            processed := processed + n;
            skipped := skipped + array_length(ids, 1) - n;
        EXCEPTION WHEN OTHERS THEN
            failed := failed + array_length(ids, 1);
            RAISE WARNING 'redrive_dead_events: batch after id % failed: %',
                ids[1] - 1, SQLERRM;
        END;
    END LOOP;
    IF processed > 0 THEN
        PERFORM pg_notify('dispatchbox_outbox', '');
    END IF;
END
$fn$;

COMMENT ON FUNCTION redrive_dead_events(text, text, timestamptz, timestamptz, text, text, bigint,
                                        integer, text, bigint, text) IS
    'dispatchbox: redrive matching dead events in batches; returns processed, skipped, failed';

-- ==== end 0007 ====

-- ==== 0008 delivery_controls ====
--
-- * outbox_breaker: one row per destination a worker configured with Dispatcher.destination().
--   Every process on every host reads and writes it, so a breaker opened by one worker stops
--   every worker. closed -> open (N consecutive failures, or a failure rate over a window) ->
--   half_open after a cool-down (one process takes the probe) -> closed on success, or open
--   again with a longer cool-down. `manual` marks a breaker an operator opened: no probe closes
--   it, only an operator.
-- * outbox_rate_limit: a token bucket per rate-limited destination, taken in bulk by the claim.
-- * The audit trail records operators' breaker actions and automatic replays; the alert state
--   gets a 'breaker_open' incident (a breaker open longer than a threshold).
-- Both tables are new and small (one row per destination): nothing is rewritten.

CREATE TABLE outbox_breaker (
    destination           text        PRIMARY KEY,
    state                 text        NOT NULL DEFAULT 'closed'
                          CHECK (state IN ('closed', 'open', 'half_open')),
    -- opened by an operator: stays open until an operator closes or resets it
    manual                boolean     NOT NULL DEFAULT false,
    -- the policy, written by the workers from Dispatcher.destination() at start
    failure_threshold     integer     NOT NULL DEFAULT 5 CHECK (failure_threshold >= 1),
    failure_rate          double precision CHECK (failure_rate > 0 AND failure_rate <= 1),
    rate_window_seconds   double precision NOT NULL DEFAULT 60 CHECK (rate_window_seconds > 0),
    min_calls             integer     NOT NULL DEFAULT 20 CHECK (min_calls >= 1),
    cooldown_seconds      double precision NOT NULL DEFAULT 30 CHECK (cooldown_seconds > 0),
    max_cooldown_seconds  double precision NOT NULL DEFAULT 600 CHECK (max_cooldown_seconds > 0),
    health_check          boolean     NOT NULL DEFAULT false,
    replay_dead           boolean     NOT NULL DEFAULT false,
    -- what the workers counted (one statement per flush, not per event)
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    window_started_at     timestamptz NOT NULL DEFAULT now(),
    window_calls          bigint      NOT NULL DEFAULT 0,
    window_failures       bigint      NOT NULL DEFAULT 0,
    last_error            text,
    -- the current outage: when it began (kept across re-opens), when the next probe is due,
    -- how many probes failed in a row (the cool-down doubles with each)
    opened_at             timestamptz,
    open_until            timestamptz,
    reopens               integer     NOT NULL DEFAULT 0,
    -- the half-open probe's holder and its lease
    probe_by              text,
    probe_until           timestamptz,
    closed_at             timestamptz,
    -- set when a breaker with replay_dead closes: dead events since then are due for replay;
    -- the worker that takes the replay clears it
    replay_since          timestamptz,
    transitions           bigint      NOT NULL DEFAULT 0,
    changed_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE outbox_breaker IS
    'dispatchbox: circuit breaker per destination, shared by every worker on every host';

CREATE TABLE outbox_rate_limit (
    destination  text             PRIMARY KEY,
    per_second   double precision NOT NULL CHECK (per_second > 0),
    burst        double precision NOT NULL CHECK (burst >= 1),
    tokens       double precision NOT NULL,
    tokens_at    timestamptz      NOT NULL DEFAULT now()
);

COMMENT ON TABLE outbox_rate_limit IS
    'dispatchbox: token bucket per rate-limited destination, taken in bulk by the claim';

ALTER TABLE outbox_dead_letter_audit
    DROP CONSTRAINT outbox_dead_letter_audit_action_check,
    ADD CONSTRAINT outbox_dead_letter_audit_action_check
        CHECK (action IN ('retry', 'retry_batch', 'retry_filter', 'export', 'purge',
                          'breaker_open', 'breaker_close', 'breaker_reset', 'replay'));

ALTER TABLE outbox_alert_state
    DROP CONSTRAINT outbox_alert_state_alert_check,
    ADD CONSTRAINT outbox_alert_state_alert_check
        CHECK (alert IN ('dead_events', 'dead_count', 'dead_age', 'pending_age',
                         'breaker_open'));

-- ==== end 0008 ====

-- ==== 0009 ordering_expiry_backlog_checksum ====
-- Per-aggregate ordering, expiry, backpressure and payload checksums (issue 14, items 4-7).
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

-- ==== end 0009 ====

-- ==== 0010 security ====
-- row-level security for operators limited to some aggregate types, and the
-- "cleanup held back" alert (issue 16). Roles and grants are not here: sql/grants.sql, run by
-- `dispatchbox db migrate` (when it may create roles) and `dispatchbox db grant`.
--
-- * dispatchbox_role_scope: which aggregate types (tenants, teams) a role may see. A login role
--   that is a member of any role named here sees only the aggregate types listed for those
--   roles; a role named nowhere (the workers, an unrestricted operator) sees every row.
-- * dispatchbox_scoped_types(): the caller's aggregate types, NULL when it is not limited.
-- * Policies on outbox_event, outbox_event_archive and outbox_dead_fingerprint. They do nothing
--   until `dispatchbox db rls enable` turns row-level security on for those tables (opt-in);
--   the tables' owner is never limited by them. Catalog-only changes: no table is rewritten,
--   each statement takes a brief lock on its table.
-- * outbox_alert_state accepts the alert 'cleanup_held' (a transaction, replication slot or
--   prepared transaction holding back vacuum of the outbox for too long).

CREATE TABLE dispatchbox_role_scope (
    role_name      text        NOT NULL,
    aggregate_type text        NOT NULL,
    granted_at     timestamptz NOT NULL DEFAULT now(),
    granted_by     text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (role_name, aggregate_type)
);

COMMENT ON TABLE dispatchbox_role_scope IS
    'dispatchbox: aggregate types a role is limited to when row-level security is enabled';

CREATE FUNCTION dispatchbox_scoped_types() RETURNS text[]
    LANGUAGE sql STABLE AS $$
    SELECT array_agg(DISTINCT s.aggregate_type)
      FROM dispatchbox_role_scope s
      JOIN pg_roles r ON r.rolname = s.role_name
     WHERE pg_has_role(current_user, r.oid, 'MEMBER')
$$;

-- (SELECT ...) makes the scope an InitPlan: read once a statement, not once a row.
CREATE POLICY dispatchbox_scope ON outbox_event
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_event_archive
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_dead_fingerprint
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

ALTER TABLE outbox_alert_state
    DROP CONSTRAINT outbox_alert_state_alert_check,
    ADD CONSTRAINT outbox_alert_state_alert_check
        CHECK (alert IN ('dead_events', 'dead_count', 'dead_age', 'pending_age',
                         'breaker_open', 'cleanup_held'));
-- What holds back vacuum of the outbox: the oldest snapshot (a session's backend_xmin, e.g. a
-- REPEATABLE READ transaction left open), prepared transaction or replication slot, and the
-- outbox's dead tuples, for this database. Read by `db status`, the metrics and the 'cleanup_held' alert. Other
-- sessions' backend_xmin is visible to superusers and members of pg_read_all_stats only.
CREATE VIEW outbox_cleanup_horizon AS
WITH snapshots AS (
    SELECT pid, usename, application_name, state, backend_xmin,
           EXTRACT(EPOCH FROM now() - COALESCE(xact_start, backend_start))::double precision
               AS age_seconds
      FROM pg_stat_activity
     WHERE backend_xmin IS NOT NULL
       AND pid <> pg_backend_pid()
       AND backend_type <> 'autovacuum worker'
       -- a snapshot holds back this database's tables; a standby's feedback (walsender) all
       AND (datname = current_database() OR backend_type = 'walsender')
),
prepared AS (
    SELECT gid, transaction,
           EXTRACT(EPOCH FROM now() - prepared)::double precision AS age_seconds
      FROM pg_prepared_xacts
     WHERE database = current_database()
),
oldest AS (
    SELECT 'session ' || pid || ' (' || COALESCE(NULLIF(application_name, ''), '-') || ', '
           || COALESCE(usename::text, '-') || ', ' || COALESCE(state, '-') || ')' AS holder,
           age_seconds
      FROM snapshots
    UNION ALL
    SELECT 'prepared transaction ' || gid, age_seconds FROM prepared
     ORDER BY age_seconds DESC
     LIMIT 1
)
SELECT COALESCE((SELECT age_seconds FROM oldest), 0)::double precision AS held_seconds,
       (SELECT holder FROM oldest) AS held_by,
       COALESCE(GREATEST((SELECT max(age(backend_xmin)) FROM snapshots),
                         (SELECT max(age(transaction)) FROM prepared),
                         (SELECT max(GREATEST(age(xmin), age(catalog_xmin)))
                            FROM pg_replication_slots)), 0)::bigint AS held_xids,
       (SELECT string_agg(slot_name::text, ', ' ORDER BY slot_name) FROM pg_replication_slots
         WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL) AS slots_holding,
       COALESCE((SELECT n_dead_tup FROM pg_stat_user_tables
                  WHERE relid = 'outbox_event'::regclass), 0)::bigint AS outbox_dead_tuples,
       COALESCE((SELECT n_live_tup FROM pg_stat_user_tables
                  WHERE relid = 'outbox_event'::regclass), 0)::bigint AS outbox_live_tuples;
-- ==== end 0010 ====

-- ==== 0011 redrive_operations ====
-- 0011_redrive_operations: crash attempts apart from error attempts, poison events, redrive
-- operations (canary, paced), the registry of error fingerprints ever seen, and the alerts
-- built on it (issue 22). Every change is safe on a populated table: a column with a constant
-- default or nullable (no rewrite), new tables, and CHECK constraints on small tables.
--
-- * outbox_event.crash_attempts: attempts lost to a worker that died while holding the event
--   (its lease expired). The reaper counts them here instead of in `attempts`, so a crash
--   costs nothing against max_attempts; after `--max-crashes` of them the event is poison and
--   goes to dead (last_error 'Poison: ...'). A redrive resets it (trigger below).
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

-- ==== end 0011 ====

-- ==== 0012 dead_letter_summary ====
-- 0012_dead_letter_summary: dead counts kept by group and by hour, so that `dead-events stats`,
-- the dead counts, the console's overview and error groups and the metrics read O(groups) rows
-- instead of every dead event (issues 18 item 3 and 19).
--
-- * outbox_dead_fingerprint.destination: the mirror of dead events carries the destination too,
--   so that a destination filter or grouping never reads the outbox rows. Backfilled here: one
--   UPDATE of every mirror row joined to its outbox row, holding the mirror's row locks meanwhile
--   (`python -m bench console` times this migration on 1,000,000 dead events: docs/en/console.md).
-- * outbox_dead_summary: dead events now, per (aggregate_type, event_type, destination,
--   fingerprint), with their earliest and latest death.
-- * outbox_dead_hourly: the same groups per UTC hour of death, for the overview's chart.
-- * outbox_dead_delta: what the triggers on the mirror append (one row per event that entered or
--   left it), folded into the two summaries by outbox_dead_summary_fold().
-- * outbox_dead_groups, outbox_dead_hours: the views the reads use, summaries plus deltas: exact.
--
-- Concurrency: a death appends a delta row and takes no lock another transaction waits for.
-- One statement in 16 that changes the mirror then tries a fold (a transaction-level advisory
-- lock, tried, never waited for): one transaction at a time moves the deltas it sees into the
-- summaries, in key order, so the summary rows are written by one transaction at a time and two
-- transactions never lock them in opposite orders (incrementing a group's row in every dying
-- transaction deadlocked two workers against an operator's DELETE in the first version of
-- tests/integration/test_dead_summary.py).

ALTER TABLE outbox_dead_fingerprint ADD COLUMN destination text;

UPDATE outbox_dead_fingerprint f
   SET destination = e.destination
  FROM outbox_event e
 WHERE e.id = f.event_id AND e.destination IS NOT NULL;

CREATE OR REPLACE FUNCTION outbox_dead_fingerprint_sync() RETURNS trigger
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
        (event_id, fingerprint, event_type, aggregate_type, dead_at, destination)
    VALUES (NEW.id, coalesce(outbox_error_fingerprint(NEW.last_error), 'none'),
            NEW.event_type, NEW.aggregate_type, NEW.dead_at, NEW.destination)
    ON CONFLICT (event_id) DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint,
           event_type = EXCLUDED.event_type,
           aggregate_type = EXCLUDED.aggregate_type,
           dead_at = EXCLUDED.dead_at,
           destination = EXCLUDED.destination;
    RETURN NULL;
END;
$$;

-- The update trigger follows the destination of a dead event as well.
DROP TRIGGER outbox_event_dead_fingerprint_update ON outbox_event;

CREATE TRIGGER outbox_event_dead_fingerprint_update
    AFTER UPDATE ON outbox_event
    FOR EACH ROW WHEN (
        OLD.redrive_count = NEW.redrive_count
        AND ((OLD.status = 'dead') <> (NEW.status = 'dead')
             OR (NEW.status = 'dead'
                 AND (OLD.last_error, OLD.event_type, OLD.aggregate_type, OLD.dead_at,
                      OLD.destination)
                     IS DISTINCT FROM
                     (NEW.last_error, NEW.event_type, NEW.aggregate_type, NEW.dead_at,
                      NEW.destination)))
    )
    EXECUTE FUNCTION outbox_dead_fingerprint_sync();

CREATE TABLE outbox_dead_summary (
    aggregate_type text        NOT NULL,
    event_type     text        NOT NULL,
    destination    text,
    fingerprint    text        NOT NULL,
    -- no CHECK (dead_count >= 0): an INSERT .. ON CONFLICT checks the proposed row (a negative
    -- delta) before it finds the conflict. tests/integration/test_dead_summary.py holds it.
    dead_count     bigint      NOT NULL,
    first_dead_at  timestamptz,
    last_dead_at   timestamptz,
    CONSTRAINT outbox_dead_summary_key
        UNIQUE NULLS NOT DISTINCT (aggregate_type, event_type, destination, fingerprint)
);

COMMENT ON TABLE outbox_dead_summary IS
    'dispatchbox: dead events now per group (aggregate type, event type, destination, error fingerprint), kept exact by triggers';

CREATE TABLE outbox_dead_hourly (
    aggregate_type text        NOT NULL,
    event_type     text        NOT NULL,
    destination    text,
    fingerprint    text        NOT NULL,
    hour           timestamptz NOT NULL,
    -- no CHECK (dead_count >= 0): an INSERT .. ON CONFLICT checks the proposed row (a negative
    -- delta) before it finds the conflict. tests/integration/test_dead_summary.py holds it.
    dead_count     bigint      NOT NULL,
    CONSTRAINT outbox_dead_hourly_key
        UNIQUE NULLS NOT DISTINCT (aggregate_type, event_type, destination, fingerprint, hour)
);

CREATE INDEX outbox_dead_hourly_hour_idx ON outbox_dead_hourly (hour);

-- Rows a statement brought to zero, found without a scan, then deleted in the same statement.
CREATE INDEX outbox_dead_hourly_zero_idx ON outbox_dead_hourly (hour) WHERE dead_count = 0;

COMMENT ON TABLE outbox_dead_hourly IS
    'dispatchbox: dead events now per group and UTC hour of death, kept exact by triggers';

-- The earliest and latest death of a group, found again when a statement removed one of them:
-- two probes of this index per such group.
CREATE INDEX outbox_dead_fingerprint_group_idx
    ON outbox_dead_fingerprint (fingerprint, event_type, aggregate_type, dead_at);

-- The hour of a death: UTC hours (date_bin from the Unix epoch), whatever the session's zone.
CREATE FUNCTION outbox_dead_hour(at timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT date_bin('1 hour', at, '1970-01-01 00:00:00+00'::timestamptz)
$$;

-- Changes not folded yet: one row per dead event that entered the mirror (n = 1) or left it
-- (n = -1). Appended by the triggers below, never updated: deaths in many transactions at once
-- take no lock that another waits for, whatever their groups. outbox_dead_summary_fold() moves
-- them into the summaries; readers add what is still here (outbox_dead_groups, outbox_dead_hours).
CREATE TABLE outbox_dead_delta (
    aggregate_type text        NOT NULL,
    event_type     text        NOT NULL,
    destination    text,
    fingerprint    text        NOT NULL,
    dead_at        timestamptz,
    n              smallint    NOT NULL CHECK (n IN (-1, 1))
);

COMMENT ON TABLE outbox_dead_delta IS
    'dispatchbox: dead-letter summary changes not folded into outbox_dead_summary yet';

-- Apply deltas (rows of outbox_dead_delta's type): groups and hours are written in key order;
-- a group or hour whose count reaches zero is deleted; a group that lost its earliest or latest
-- death looks them up again in the mirror.
CREATE FUNCTION outbox_dead_summary_apply(deltas outbox_dead_delta[]) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    removed boolean := EXISTS (SELECT 1 FROM unnest(deltas) d WHERE d.n < 0);
BEGIN
    INSERT INTO outbox_dead_summary AS s
        (aggregate_type, event_type, destination, fingerprint, dead_count, first_dead_at,
         last_dead_at)
    SELECT d.aggregate_type, d.event_type, d.destination, d.fingerprint, sum(d.n),
           min(d.dead_at) FILTER (WHERE d.n > 0), max(d.dead_at) FILTER (WHERE d.n > 0)
      FROM unnest(deltas) d
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
    ON CONFLICT ON CONSTRAINT outbox_dead_summary_key DO UPDATE
       SET dead_count = s.dead_count + EXCLUDED.dead_count,
           first_dead_at = LEAST(s.first_dead_at, EXCLUDED.first_dead_at),
           last_dead_at = GREATEST(s.last_dead_at, EXCLUDED.last_dead_at);

    INSERT INTO outbox_dead_hourly AS s
        (aggregate_type, event_type, destination, fingerprint, hour, dead_count)
    SELECT d.aggregate_type, d.event_type, d.destination, d.fingerprint,
           outbox_dead_hour(d.dead_at), sum(d.n)
      FROM unnest(deltas) d
     WHERE d.dead_at IS NOT NULL
     GROUP BY 1, 2, 3, 4, 5
    HAVING sum(d.n) <> 0
     ORDER BY 1, 2, 3, 4, 5
    ON CONFLICT ON CONSTRAINT outbox_dead_hourly_key DO UPDATE
       SET dead_count = s.dead_count + EXCLUDED.dead_count;

    IF NOT removed THEN
        RETURN;
    END IF;
    DELETE FROM outbox_dead_summary s WHERE s.dead_count = 0;
    DELETE FROM outbox_dead_hourly s WHERE s.dead_count = 0;
    UPDATE outbox_dead_summary s
       SET first_dead_at = (SELECT f.dead_at FROM outbox_dead_fingerprint f
                             WHERE f.fingerprint = s.fingerprint
                               AND f.event_type = s.event_type
                               AND f.aggregate_type = s.aggregate_type
                               AND f.destination IS NOT DISTINCT FROM s.destination
                             ORDER BY f.dead_at LIMIT 1),
           last_dead_at = (SELECT f.dead_at FROM outbox_dead_fingerprint f
                            WHERE f.fingerprint = s.fingerprint
                              AND f.event_type = s.event_type
                              AND f.aggregate_type = s.aggregate_type
                              AND f.destination IS NOT DISTINCT FROM s.destination
                            ORDER BY f.dead_at DESC NULLS LAST LIMIT 1)
      FROM (SELECT DISTINCT d.aggregate_type, d.event_type, d.destination, d.fingerprint
              FROM unnest(deltas) d
             WHERE d.n < 0) g
     WHERE g.aggregate_type = s.aggregate_type AND g.event_type = s.event_type
       AND g.destination IS NOT DISTINCT FROM s.destination
       AND g.fingerprint = s.fingerprint;
END;
$$;

-- Fold every visible delta into the summaries, in key order, in one transaction at a time (and
-- once a transaction: a second call in the same transaction returns 0): the
-- transaction-level advisory lock is tried, never waited for (a transaction that does not get it
-- leaves its deltas to the next fold), so a fold never queues behind another and only the
-- folding transaction holds summary rows. Only under READ COMMITTED: a later snapshot could find
-- its deltas deleted by a fold that committed since. Returns how many deltas it folded.
CREATE FUNCTION outbox_dead_summary_fold() RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    deltas outbox_dead_delta[];
BEGIN
    -- At most one fold a transaction: each fold rewrites the summary rows it touches, and a
    -- transaction that killed 100,000 events in one statement, folding every 16th, left the
    -- summary 1,124 pages (9 MB) for its 160 rows, which every read then scanned.
    IF current_setting('transaction_isolation') <> 'read committed'
       OR current_setting('dispatchbox.dead_summary_folded', true) = 'on'
       OR NOT pg_try_advisory_xact_lock(hashtext('dispatchbox.outbox_dead_summary_fold')) THEN
        RETURN 0;
    END IF;
    PERFORM set_config('dispatchbox.dead_summary_folded', 'on', true);
    WITH gone AS (DELETE FROM outbox_dead_delta RETURNING *)
    SELECT array_agg(ROW(g.aggregate_type, g.event_type, g.destination, g.fingerprint,
                         g.dead_at, g.n)::outbox_dead_delta)
      INTO deltas FROM gone g;
    IF deltas IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM outbox_dead_summary_apply(deltas);
    RETURN cardinality(deltas);
END;
$$;

-- Each statement that updates or deletes mirror rows appends its deltas, then now and then tries
-- a fold.
CREATE FUNCTION outbox_dead_summary_sync() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    -- Each branch reads only the transition tables its trigger declares. Inserts: see
    -- outbox_error_fingerprint_seen_sync below.
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO outbox_dead_delta
            (aggregate_type, event_type, destination, fingerprint, dead_at, n)
        SELECT b.aggregate_type, b.event_type, b.destination, b.fingerprint, b.dead_at, 1
          FROM born b;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO outbox_dead_delta
            (aggregate_type, event_type, destination, fingerprint, dead_at, n)
        SELECT g.aggregate_type, g.event_type, g.destination, g.fingerprint, g.dead_at, -1
          FROM gone g;
    END IF;
    -- One statement in 16 tries a fold: folding at every death halved the deaths a second
    -- (`python -m bench dying`); the views add the deltas not folded yet, so reads stay exact.
    IF random() < 0.0625 THEN
        PERFORM outbox_dead_summary_fold();
    END IF;
    RETURN NULL;
END;
$$;

-- A death (an insert into the mirror) appends its delta in the trigger that already runs for it
-- (0011's registry of fingerprints seen): one trigger call a death, not two.
CREATE OR REPLACE FUNCTION outbox_error_fingerprint_seen_sync() RETURNS trigger
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
    INSERT INTO outbox_dead_delta
        (aggregate_type, event_type, destination, fingerprint, dead_at, n)
    SELECT b.aggregate_type, b.event_type, b.destination, b.fingerprint, b.dead_at, 1
      FROM born b;
    IF random() < 0.0625 THEN
        PERFORM outbox_dead_summary_fold();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_dead_summary_delete
    AFTER DELETE ON outbox_dead_fingerprint
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_dead_summary_sync();

CREATE TRIGGER outbox_dead_summary_update
    AFTER UPDATE ON outbox_dead_fingerprint
    REFERENCING OLD TABLE AS gone NEW TABLE AS born
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_dead_summary_sync();

-- TRUNCATE of the outbox truncates the mirror (0003); the summaries follow.
CREATE FUNCTION outbox_dead_summary_truncate() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE outbox_dead_summary, outbox_dead_hourly, outbox_dead_delta;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_dead_fingerprint_summary_truncate
    AFTER TRUNCATE ON outbox_dead_fingerprint
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_dead_summary_truncate();

-- Backfill: what is dead now, in one pass over the mirror.
INSERT INTO outbox_dead_summary
    (aggregate_type, event_type, destination, fingerprint, dead_count, first_dead_at,
     last_dead_at)
SELECT aggregate_type, event_type, destination, fingerprint, count(*), min(dead_at), max(dead_at)
  FROM outbox_dead_fingerprint
 GROUP BY 1, 2, 3, 4;

INSERT INTO outbox_dead_hourly
    (aggregate_type, event_type, destination, fingerprint, hour, dead_count)
SELECT aggregate_type, event_type, destination, fingerprint, outbox_dead_hour(dead_at), count(*)
  FROM outbox_dead_fingerprint
 WHERE dead_at IS NOT NULL
 GROUP BY 1, 2, 3, 4, 5;

-- Row-level security follows the mirror's (0010): a scoped role sees its aggregate types' groups.
CREATE POLICY dispatchbox_scope ON outbox_dead_summary
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_dead_hourly
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

CREATE POLICY dispatchbox_scope ON outbox_dead_delta
    USING ((SELECT dispatchbox_scoped_types()) IS NULL
           OR aggregate_type = ANY ((SELECT dispatchbox_scoped_types())::text[]));

-- What the reads use: the summaries plus the deltas not folded yet, exact in any snapshot (a
-- fold deletes deltas and updates the summaries in one transaction). A group with a removal not
-- folded yet finds its earliest and latest death in the mirror (two index probes). The groups
-- are read by a function with jit = off: the planner costs those probes, never run for most
-- groups, as scans of the whole group, and that estimate made PostgreSQL JIT-compile every
-- read, 40 ms to 1.7 s of each read on 1,000,000 dead events for 0.2 ms of execution. Security
-- invoker: a scoped role sees its aggregate types only, as in the tables.
CREATE FUNCTION outbox_dead_groups_read() RETURNS TABLE (
    aggregate_type text,
    event_type     text,
    destination    text,
    fingerprint    text,
    dead_count     bigint,
    first_dead_at  timestamptz,
    last_dead_at   timestamptz
)
    LANGUAGE sql STABLE ROWS 100 SET jit = off AS $$
SELECT k.aggregate_type, k.event_type, k.destination, k.fingerprint, k.dead_count,
       CASE WHEN k.removed THEN
                (SELECT f.dead_at FROM outbox_dead_fingerprint f
                  WHERE f.fingerprint = k.fingerprint AND f.event_type = k.event_type
                    AND f.aggregate_type = k.aggregate_type
                    AND f.destination IS NOT DISTINCT FROM k.destination
                  ORDER BY f.dead_at LIMIT 1)
            ELSE k.first_dead_at END AS first_dead_at,
       CASE WHEN k.removed THEN
                (SELECT f.dead_at FROM outbox_dead_fingerprint f
                  WHERE f.fingerprint = k.fingerprint AND f.event_type = k.event_type
                    AND f.aggregate_type = k.aggregate_type
                    AND f.destination IS NOT DISTINCT FROM k.destination
                  ORDER BY f.dead_at DESC NULLS LAST LIMIT 1)
            ELSE k.last_dead_at END AS last_dead_at
  FROM (SELECT x.aggregate_type, x.event_type, x.destination, x.fingerprint,
               sum(x.n)::bigint AS dead_count, min(x.first_dead_at) AS first_dead_at,
               max(x.last_dead_at) AS last_dead_at, bool_or(x.n < 0) AS removed
          FROM (SELECT s.aggregate_type, s.event_type, s.destination, s.fingerprint,
                       s.dead_count AS n, s.first_dead_at, s.last_dead_at
                  FROM outbox_dead_summary s
                UNION ALL
                SELECT d.aggregate_type, d.event_type, d.destination, d.fingerprint, d.n,
                       CASE WHEN d.n > 0 THEN d.dead_at END, CASE WHEN d.n > 0 THEN d.dead_at END
                  FROM outbox_dead_delta d) x
         GROUP BY 1, 2, 3, 4) k
 WHERE k.dead_count > 0
$$;

CREATE VIEW outbox_dead_groups WITH (security_invoker = true) AS
SELECT * FROM outbox_dead_groups_read();

COMMENT ON VIEW outbox_dead_groups IS
    'dispatchbox: dead events now per aggregate type, event type, destination and error fingerprint (exact)';

CREATE VIEW outbox_dead_hours WITH (security_invoker = true) AS
SELECT x.aggregate_type, x.event_type, x.destination, x.fingerprint, x.hour,
       sum(x.n)::bigint AS dead_count
  FROM (SELECT h.aggregate_type, h.event_type, h.destination, h.fingerprint, h.hour,
               h.dead_count AS n
          FROM outbox_dead_hourly h
        UNION ALL
        SELECT d.aggregate_type, d.event_type, d.destination, d.fingerprint,
               outbox_dead_hour(d.dead_at), d.n
          FROM outbox_dead_delta d
         WHERE d.dead_at IS NOT NULL) x
 GROUP BY 1, 2, 3, 4, 5
HAVING sum(x.n) <> 0;

COMMENT ON VIEW outbox_dead_hours IS
    'dispatchbox: dead events now per group and UTC hour of death (exact)';

-- ==== end 0012 ====

-- ==== 0013 partitioned_outbox ====
-- at a time instead of row by row (issue 18 item 2). Applying this migration changes nothing in
-- how the outbox works: it only adds the functions and two small tables. The conversion is
-- `dispatchbox db partition` (docs/en/scaling.md "A partitioned outbox").
--
-- * outbox_partition_state: one row once the conversion has started: the partition size, the
--   first id of the partitioned range, the next partition's lower bound, the storage settings
--   every new partition gets, and the phase ('prepared', then 'partitioned').
-- * outbox_idempotency_key: the idempotency keys of a partitioned outbox. A unique index on a
--   partitioned table must contain the partition key, so "unique when set" over all partitions
--   is kept here instead: a BEFORE INSERT trigger on the partitioned outbox claims the key
--   (INSERT ... ON CONFLICT DO NOTHING, which waits for a concurrent claim of the same key to
--   commit or roll back) and skips the event's row when the key is taken, exactly what
--   `ON CONFLICT DO NOTHING` did on the single table. Deleting the event (archival, purge)
--   releases the key; retiring a partition releases its keys. Unused on the single table.
-- * outbox_partition_track_keys / outbox_partition_prepare / outbox_partition_swap /
--   outbox_partition_finish: the steps of the conversion. Prepare
--   builds the partitioned table beside the populated one (no lock on it but a brief one to add
--   a NOT VALID bound check); the caller validates that check (no blocking lock) and then runs
--   swap, the only step that locks the outbox exclusively: a few catalog changes, no scan.
-- * outbox_partition_create_ahead: partitions created ahead of the id sequence, as plain tables
--   attached to the outbox (ATTACH takes SHARE UPDATE EXCLUSIVE on the outbox, which does not
--   conflict with the workers' reads and writes).
-- * outbox_partition_retire (a procedure: it commits between steps): archives a partition that
--   holds only done events older than the retention (a copy, no DELETE), then detaches and
--   drops it under a short lock_timeout, and tries again at the next run when the lock is busy.
-- * outbox_partition_maintain: both, for pg_cron.
-- * archive_outbox_events leaves done rows to retirement when the outbox is partitioned.

CREATE TABLE outbox_partition_state (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    partition_size  bigint      NOT NULL CHECK (partition_size >= 1000),
    first_bound     bigint      NOT NULL,
    next_bound      bigint      NOT NULL,
    reloptions      text[],
    phase           text        NOT NULL CHECK (phase IN ('prepared', 'partitioned')),
    prepared_at     timestamptz NOT NULL DEFAULT now(),
    partitioned_at  timestamptz
);

COMMENT ON TABLE outbox_partition_state IS
    'dispatchbox: the partitioned outbox (opt-in): size, bounds, phase; see docs/en/scaling.md';

CREATE TABLE outbox_idempotency_key (
    idempotency_key text   PRIMARY KEY,
    event_id        bigint NOT NULL
);

CREATE INDEX outbox_idempotency_key_event_idx ON outbox_idempotency_key (event_id);

COMMENT ON TABLE outbox_idempotency_key IS
    'dispatchbox: idempotency keys of a partitioned outbox, unique across partitions';

-- true once outbox_event is the partitioned table.
CREATE FUNCTION outbox_is_partitioned() RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT c.relkind = 'p' FROM pg_class c WHERE c.oid = 'outbox_event'::regclass
$$;

-- SECURITY DEFINER: the publisher's role needs no grant on the key table.
CREATE FUNCTION outbox_idempotency_claim() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO outbox_idempotency_key (idempotency_key, event_id)
    VALUES (NEW.idempotency_key, NEW.id)
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION outbox_idempotency_release() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM outbox_idempotency_key
     WHERE idempotency_key = OLD.idempotency_key AND event_id = OLD.id;
    RETURN NULL;
END;
$$;

-- A new partition [p_lo, p_hi): a plain table with the outbox's columns and storage settings,
-- attached with a check that proves the bound (so ATTACH scans nothing).
CREATE FUNCTION outbox_partition_add(p_lo bigint, p_hi bigint) RETURNS text
    LANGUAGE plpgsql AS $$
DECLARE
    part text := 'outbox_event_p' || p_lo;
    opts text[] := (SELECT s.reloptions FROM outbox_partition_state s);
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE outbox_event INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                   part);
    IF opts IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %I SET (%s)', part, array_to_string(opts, ', '));
    END IF;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (id >= %s AND id < %s)',
                   part, part || '_bound', p_lo, p_hi);
    EXECUTE format('ALTER TABLE outbox_event ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                   part, p_lo, p_hi);
    RETURN part;
END;
$$;

-- Step 0 of the conversion: from now on every keyed insert into the single table records its
-- key too (the trigger is dropped at swap). CREATE TRIGGER waits for the inserts in flight to
-- commit, so prepare's copy, which starts after this commits, sees every key the trigger does
-- not. A brief lock (SHARE ROW EXCLUSIVE): commit at once.
CREATE FUNCTION outbox_partition_track_keys() RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF outbox_is_partitioned() THEN
        RAISE EXCEPTION 'outbox_event is already partitioned' USING ERRCODE = 'object_in_use';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'outbox_event'::regclass
                      AND tgname = 'outbox_event_track_idempotency_key') THEN
        CREATE TRIGGER outbox_event_track_idempotency_key
            AFTER INSERT ON outbox_event
            FOR EACH ROW WHEN (NEW.idempotency_key IS NOT NULL)
            EXECUTE FUNCTION outbox_idempotency_claim();
    END IF;
END;
$$;

-- Step 1 of the conversion. Builds outbox_event_partitioned (no partition below p_first_bound
-- yet: the populated table becomes that one at swap) with every index, trigger, policy, grant
-- and comment of outbox_event, adds the NOT VALID check id < first bound to outbox_event, and
-- copies the idempotency keys. Returns the first bound. Needs outbox_event_idempotency_key_idx
-- (created concurrently by the caller): the partitioned table's own, non-unique, look-up index.
CREATE FUNCTION outbox_partition_prepare(p_partition_size bigint, p_headroom bigint)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    old oid := 'outbox_event'::regclass;
    last_id bigint := COALESCE(pg_sequence_last_value(pg_get_serial_sequence('outbox_event', 'id')::regclass), 0);
    bound bigint;
    r record;
    i integer;
BEGIN
    IF outbox_is_partitioned() THEN
        RAISE EXCEPTION 'outbox_event is already partitioned' USING ERRCODE = 'object_in_use';
    END IF;
    IF EXISTS (SELECT 1 FROM outbox_partition_state) THEN
        RAISE EXCEPTION 'a conversion was already prepared; run outbox_partition_swap()'
            USING ERRCODE = 'object_in_use';
    END IF;
    IF p_partition_size IS NULL OR p_partition_size < 1000 OR p_headroom IS NULL
       OR p_headroom < 0 THEN
        RAISE EXCEPTION 'partition size must be at least 1000 and headroom at least 0'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                    WHERE i.indrelid = old AND c.relname = 'outbox_event_idempotency_key_idx'
                      AND i.indisvalid) THEN
        RAISE EXCEPTION 'outbox_event_idempotency_key_idx is missing or invalid'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- The first partitioned id: past what is drawn now plus the headroom that publishers may
    -- draw before the swap, rounded up to a whole partition.
    bound := ((last_id + p_headroom) / p_partition_size + 1) * p_partition_size;

    CREATE TABLE outbox_event_partitioned (
        LIKE outbox_event INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY
    ) PARTITION BY RANGE (id);
    ALTER TABLE outbox_event_partitioned
        ADD CONSTRAINT outbox_event_partitioned_pkey PRIMARY KEY (id);

    -- Every other index, under a temporary name (swap gives it the original one). Unique
    -- indexes other than the primary key cannot span partitions: the idempotency key's is
    -- replaced by outbox_idempotency_key, any other is refused.
    FOR r IN SELECT c.relname, i.indisunique, i.indisprimary, pg_get_indexdef(i.indexrelid) AS def
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = old
    LOOP
        CONTINUE WHEN r.indisprimary OR r.relname = 'outbox_event_idempotency_key_uq';
        IF r.indisunique THEN
            RAISE EXCEPTION 'unique index % cannot span partitions', r.relname
                USING ERRCODE = 'feature_not_supported';
        END IF;
        EXECUTE regexp_replace(r.def, '^CREATE INDEX \S+ ON (\S+\.)?outbox_event ',
                               'CREATE INDEX ' || quote_ident(left(r.relname, 57) || '_partd')
                               || ' ON outbox_event_partitioned ');
    END LOOP;

    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = old
                      AND tgname = 'outbox_event_track_idempotency_key') THEN
        RAISE EXCEPTION 'run outbox_partition_track_keys() first'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    FOR r IN SELECT pg_get_triggerdef(t.oid) AS def
               FROM pg_trigger t WHERE t.tgrelid = old AND NOT t.tgisinternal
                AND t.tgname <> 'outbox_event_track_idempotency_key'
    LOOP
        EXECUTE regexp_replace(r.def, ' ON (\S+\.)?outbox_event ',
                               ' ON outbox_event_partitioned ');
    END LOOP;
    CREATE TRIGGER outbox_event_idempotency_claim
        BEFORE INSERT ON outbox_event_partitioned
        FOR EACH ROW WHEN (NEW.idempotency_key IS NOT NULL)
        EXECUTE FUNCTION outbox_idempotency_claim();
    CREATE TRIGGER outbox_event_idempotency_release
        AFTER DELETE ON outbox_event_partitioned
        FOR EACH ROW WHEN (OLD.idempotency_key IS NOT NULL)
        EXECUTE FUNCTION outbox_idempotency_release();

    FOR r IN SELECT * FROM pg_policies WHERE schemaname = current_schema()
                                        AND tablename = 'outbox_event'
    LOOP
        EXECUTE format('CREATE POLICY %I ON outbox_event_partitioned AS %s FOR %s TO %s%s%s',
                       r.policyname, r.permissive, r.cmd,
                       (SELECT string_agg(CASE WHEN g = 'public' THEN 'PUBLIC'
                                               ELSE quote_ident(g) END, ', ')
                          FROM unnest(r.roles) g),
                       CASE WHEN r.qual IS NULL THEN '' ELSE ' USING (' || r.qual || ')' END,
                       CASE WHEN r.with_check IS NULL THEN ''
                            ELSE ' WITH CHECK (' || r.with_check || ')' END);
    END LOOP;

    FOR r IN SELECT a.privilege_type, a.grantee
               FROM pg_class c, aclexplode(c.relacl) a
              WHERE c.oid = old AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON outbox_event_partitioned TO %s', r.privilege_type,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
    EXECUTE format('COMMENT ON TABLE outbox_event_partitioned IS %L', obj_description(old, 'pg_class'));

    INSERT INTO outbox_partition_state (partition_size, first_bound, next_bound, reloptions, phase)
    SELECT p_partition_size, bound, bound + 2 * p_partition_size, c.reloptions, 'prepared'
      FROM pg_class c WHERE c.oid = old;

    -- The first two partitions, created here (nothing uses this table yet) so that swap,
    -- under its exclusive lock, creates none.
    FOR i IN 0 .. 1 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF outbox_event_partitioned '
                       'FOR VALUES FROM (%s) TO (%s)', 'outbox_event_p' || (bound + i * p_partition_size),
                       bound + i * p_partition_size, bound + (i + 1) * p_partition_size);
        IF (SELECT c.reloptions FROM pg_class c WHERE c.oid = old) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I SET (%s)', 'outbox_event_p' || (bound + i * p_partition_size),
                           (SELECT array_to_string(c.reloptions, ', ') FROM pg_class c WHERE c.oid = old));
        END IF;
    END LOOP;

    -- Keys known now; outbox_event_track_idempotency_key records those published from now on.
    INSERT INTO outbox_idempotency_key (idempotency_key, event_id)
    SELECT idempotency_key, id FROM outbox_event WHERE idempotency_key IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING;

    EXECUTE format('ALTER TABLE outbox_event ADD CONSTRAINT outbox_event_p0_bound '
                   'CHECK (id < %s) NOT VALID', bound);
    RETURN bound;
END;
$$;

-- Step 2, after `ALTER TABLE outbox_event VALIDATE CONSTRAINT outbox_event_p0_bound`: the
-- populated table becomes partition outbox_event_p0 of the partitioned outbox, which takes its
-- name, sequence, views and foreign keys. Catalog changes only, under the exclusive lock the
-- caller bounds with lock_timeout. Foreign keys come back NOT VALID: validate them afterwards
-- (SHARE UPDATE EXCLUSIVE, no blocking). Fails, changing nothing, when ids have reached the
-- first bound (prepare again with more headroom).
CREATE FUNCTION outbox_partition_swap() RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    old oid := 'outbox_event'::regclass;
    st outbox_partition_state;
    old_seq regclass;
    last_id bigint;
    views text[][] := '{}';
    fks text[][] := '{}';
    r record;
    i integer;
BEGIN
    SELECT * INTO st FROM outbox_partition_state WHERE phase = 'prepared' FOR UPDATE;
    IF NOT FOUND OR outbox_is_partitioned() THEN
        RAISE EXCEPTION 'no prepared conversion' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    LOCK TABLE outbox_event IN ACCESS EXCLUSIVE MODE;
    old_seq := pg_get_serial_sequence('outbox_event', 'id')::regclass;
    last_id := COALESCE(pg_sequence_last_value(old_seq), 0);
    IF last_id >= st.first_bound THEN
        RAISE EXCEPTION 'ids reached the first partition bound % before the swap', st.first_bound
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;

    -- What refers to the table by oid: views and foreign keys, recreated on the new table.
    FOR r IN SELECT DISTINCT v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS def
               FROM pg_depend d JOIN pg_rewrite w ON w.oid = d.objid
               JOIN pg_class v ON v.oid = w.ev_class
              WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = old AND v.oid <> old
    LOOP
        views := views || ARRAY[[r.name, r.def]];
    END LOOP;
    FOR r IN SELECT c.conrelid::regclass::text AS tbl, c.conname, pg_get_constraintdef(c.oid) AS def
               FROM pg_constraint c WHERE c.confrelid = old AND c.contype = 'f'
                AND c.conparentid = 0
    LOOP
        fks := fks || ARRAY[[r.tbl, r.conname, r.def]];
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;

    -- The row triggers come back on p0 from the partitioned table at ATTACH.
    FOR r IN SELECT t.tgname FROM pg_trigger t WHERE t.tgrelid = old AND NOT t.tgisinternal LOOP
        EXECUTE format('DROP TRIGGER %I ON outbox_event', r.tgname);
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = old LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.relname, left(r.relname, 57) || '_p0');
    END LOOP;
    FOR r IN SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
              WHERE i.indrelid = 'outbox_event_partitioned'::regclass LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', r.relname,
                       CASE WHEN r.relname = 'outbox_event_partitioned_pkey' THEN 'outbox_event_pkey'
                            ELSE left(r.relname, length(r.relname) - 6) END);
    END LOOP;

    ALTER TABLE outbox_event RENAME TO outbox_event_p0;
    EXECUTE format('ALTER SEQUENCE %s RENAME TO outbox_event_p0_id_seq', old_seq);
    ALTER TABLE outbox_event_partitioned RENAME TO outbox_event;
    EXECUTE format('ALTER SEQUENCE %s RENAME TO outbox_event_id_seq',
                   pg_get_serial_sequence('outbox_event', 'id'));
    PERFORM setval('outbox_event_id_seq', st.first_bound, false);
    EXECUTE format('ALTER TABLE outbox_event ATTACH PARTITION outbox_event_p0 '
                   'FOR VALUES FROM (MINVALUE) TO (%s)', st.first_bound);
    -- Row-level security follows the table (db rls enable may have run since prepare).
    IF (SELECT relrowsecurity FROM pg_class WHERE oid = old) THEN
        ALTER TABLE outbox_event ENABLE ROW LEVEL SECURITY;
    END IF;
    IF (SELECT relforcerowsecurity FROM pg_class WHERE oid = old) THEN
        ALTER TABLE outbox_event FORCE ROW LEVEL SECURITY;
    END IF;

    FOR i IN 1 .. coalesce(array_length(views, 1), 0) LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', views[i][1], views[i][2]);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(fks, 1), 0) LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s NOT VALID',
                       fks[i][1], fks[i][2], fks[i][3]);
    END LOOP;

    UPDATE outbox_partition_state SET phase = 'partitioned', partitioned_at = now();
    RETURN st.first_bound;
END;
$$;

-- Step 3, after swap: validate the foreign keys that swap re-created NOT VALID (each takes
-- SHARE UPDATE EXCLUSIVE on the referencing table and ROW SHARE on the outbox: no blocking)
-- and drop idempotency keys whose event left the outbox between prepare and swap. Returns the
-- number of foreign keys validated.
CREATE FUNCTION outbox_partition_finish() RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n integer := 0;
BEGIN
    FOR r IN SELECT c.conrelid::regclass::text AS tbl, c.conname
               FROM pg_constraint c
              WHERE c.confrelid = 'outbox_event'::regclass AND c.contype = 'f'
                AND NOT c.convalidated AND c.conparentid = 0
    LOOP
        EXECUTE format('ALTER TABLE %s VALIDATE CONSTRAINT %I', r.tbl, r.conname);
        n := n + 1;
    END LOOP;
    DELETE FROM outbox_idempotency_key k
     WHERE NOT EXISTS (SELECT 1 FROM outbox_event e WHERE e.id = k.event_id);
    RETURN n;
END;
$$;

-- Undo a prepared conversion that was not swapped (publishers reached the first bound, or the
-- operator changed their mind): drop the prepared table and its partitions, the bound check
-- and the key-tracking trigger, forget the state and the copied keys. Brief locks only.
CREATE FUNCTION outbox_partition_abandon() RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF outbox_is_partitioned() THEN
        RAISE EXCEPTION 'outbox_event is already partitioned: a swapped conversion stays'
            USING ERRCODE = 'object_in_use';
    END IF;
    DROP TABLE IF EXISTS outbox_event_partitioned;
    ALTER TABLE outbox_event DROP CONSTRAINT IF EXISTS outbox_event_p0_bound;
    DROP TRIGGER IF EXISTS outbox_event_track_idempotency_key ON outbox_event;
    DELETE FROM outbox_partition_state;
    TRUNCATE outbox_idempotency_key;
END;
$$;

-- Partitions ahead of the id sequence: at least p_spare whole partitions above the last id
-- drawn. Returns how many it created. An insert with no partition for its id fails, so run
-- this (outbox_partition_maintain does) well before publishers use p_spare partitions up.
CREATE FUNCTION outbox_partition_create_ahead(p_spare integer DEFAULT 2) RETURNS integer
    LANGUAGE plpgsql AS $$
DECLARE
    st outbox_partition_state;
    last_id bigint;
    created integer := 0;
BEGIN
    SELECT * INTO st FROM outbox_partition_state WHERE phase = 'partitioned' FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    last_id := COALESCE(pg_sequence_last_value('outbox_event_id_seq'), st.first_bound);
    WHILE st.next_bound <= last_id + p_spare * st.partition_size LOOP
        PERFORM outbox_partition_add(st.next_bound, st.next_bound + st.partition_size);
        st.next_bound := st.next_bound + st.partition_size;
        created := created + 1;
    END LOOP;
    UPDATE outbox_partition_state SET next_bound = st.next_bound;
    RETURN created;
END;
$$;

-- Partitions of the outbox by lower bound, with their bounds (p0 from 0).
CREATE FUNCTION outbox_partitions()
    RETURNS TABLE (partition_name text, lo bigint, hi bigint)
    LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           COALESCE(substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''?(\d+)')::bigint, 0),
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''?(\d+)')::bigint
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'outbox_event'::regclass
     ORDER BY 2
$$;

-- Retire every partition that holds only done events, the newest done longer than p_retention
-- ago, and whose whole id range was drawn already: copy its events and their error history to
-- the archive tables, then detach and drop it. The detach waits at most p_lock_timeout_ms for
-- its lock (workers queue behind a waiting ACCESS EXCLUSIVE request, so the wait is theirs too);
-- a busy partition is left for the next run. Dead, pending or running events keep a partition:
-- dead ones leave with archive_dead_events' retention or a redrive. `retired` returns the count.
CREATE PROCEDURE outbox_partition_retire(p_retention interval, p_lock_timeout_ms integer,
                                         INOUT retired integer DEFAULT 0)
    LANGUAGE plpgsql AS $$
DECLARE
    p record;
    busy boolean;
    last_id bigint;
    cols text := (
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum)
          FROM pg_attribute a
         WHERE a.attrelid = 'outbox_event_archive'::regclass AND a.attnum > 0
           AND NOT a.attisdropped AND a.attname <> 'archived_at'
           AND EXISTS (SELECT 1 FROM pg_attribute o
                        WHERE o.attrelid = 'outbox_event'::regclass AND o.attname = a.attname
                          AND o.attnum > 0 AND NOT o.attisdropped));
BEGIN
    retired := 0;
    -- One retirement at a time (pg_cron and a `db partition maintain` by hand): a session lock,
    -- since the procedure commits between steps.
    IF NOT outbox_is_partitioned()
       OR NOT pg_try_advisory_lock(hashtext('dispatchbox.outbox_partition_retire')) THEN
        RETURN;
    END IF;
    last_id := COALESCE(pg_sequence_last_value('outbox_event_id_seq'), 0);
    FOR p IN SELECT * FROM outbox_partitions() WHERE hi <= last_id + 1 ORDER BY lo LOOP
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %1$I WHERE status <> ''done'')
                            OR EXISTS (SELECT 1 FROM %1$I WHERE status = ''done''
                                          AND done_at >= now() - $1)', p.partition_name)
            INTO busy USING p_retention;
        CONTINUE WHEN busy;
        -- Copies, not deletes: the partition's pages go all at once with the partition.
        EXECUTE format('INSERT INTO outbox_event_archive (%2$s) SELECT %2$s FROM %1$I
                        ON CONFLICT (id) DO NOTHING', p.partition_name, cols);
        INSERT INTO outbox_event_error_archive (
            id, event_id, attempt, worker, started_at, finished_at, error_type, message, traceback)
        SELECT r.id, r.event_id, r.attempt, r.worker, r.started_at, r.finished_at,
               r.error_type, r.message, r.traceback
          FROM outbox_event_error r
         WHERE r.event_id >= p.lo AND r.event_id < p.hi
        ON CONFLICT (id) DO NOTHING;
        -- Detach checks that no error row refers to the partition: none may be left.
        DELETE FROM outbox_event_error r WHERE r.event_id >= p.lo AND r.event_id < p.hi;
        COMMIT;
        BEGIN
            PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
            EXECUTE format('ALTER TABLE outbox_event DETACH PARTITION %I', p.partition_name);
            PERFORM set_config('lock_timeout', '0', true);
            -- Under the lock nothing can have changed since: but an event redriven or replayed
            -- between the check and the copy would be lost, so check again and undo if so.
            EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE status <> ''done'')',
                           p.partition_name) INTO busy;
            IF busy THEN
                RAISE EXCEPTION 'partition % changed while being retired', p.partition_name
                    USING ERRCODE = 'object_in_use';
            END IF;
            DELETE FROM outbox_idempotency_key k WHERE k.event_id >= p.lo AND k.event_id < p.hi;
            EXECUTE format('DROP TABLE %I', p.partition_name);
            retired := retired + 1;
        EXCEPTION WHEN lock_not_available OR object_in_use THEN
            RAISE NOTICE 'outbox_partition_retire: % left for the next run: %',
                p.partition_name, SQLERRM;
        END;
        COMMIT;
    END LOOP;
    PERFORM pg_advisory_unlock(hashtext('dispatchbox.outbox_partition_retire'));
END;
$$;

-- The pg_cron job: partitions ahead, then retirement.
CREATE PROCEDURE outbox_partition_maintain(retention_days integer,
                                           lock_timeout_ms integer DEFAULT 200,
                                           spare integer DEFAULT 2)
    LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    PERFORM outbox_partition_create_ahead(spare);
    COMMIT;
    CALL outbox_partition_retire(make_interval(days => retention_days), lock_timeout_ms, n);
END;
$$;

-- Done rows of a partitioned outbox leave with their partition (outbox_partition_retire), not
-- row by row: a DELETE would leave the dead tuples that partitioning is there to avoid.
CREATE OR REPLACE FUNCTION archive_outbox_events(retention_days integer, batch_size integer DEFAULT 10000)
    RETURNS bigint
    LANGUAGE plpgsql AS $$
DECLARE
    cutoff timestamptz := outbox_retention_cutoff(retention_days);
    total  bigint := 0;
    n      integer;
BEGIN
    IF outbox_is_partitioned() THEN
        RETURN 0;
    END IF;
    LOOP
        n := outbox_archive_batch('done', cutoff, batch_size);
        EXIT WHEN n = 0;
        total := total + n;
    END LOOP;
    RETURN total;
END;
$$;
-- ==== end 0013 ====

-- ==== 0014 redrive_function_keeps_order ====
-- 0014_redrive_function_keeps_order: redrive_dead_events, the SQL function for psql and pg_cron,
-- keeps each aggregate's order as the CLI's, the API's and the console's redrive by filter do
-- (the named query redrive_plain_batch). Before, it skipped a dead event another transaction
-- held (a second redrive, an edit, an archival batch) but sent the later dead events of the same
-- aggregate back to pending, where they could be delivered before it. Now, once an event of an
-- aggregate is skipped, or its batch fails, the aggregate's later events in the run stay dead
-- too and are counted in `skipped` (or `failed`); run it again to pick them up. Same signature,
-- same results otherwise.

CREATE OR REPLACE FUNCTION redrive_dead_events(
    event_type        text        DEFAULT NULL,
    aggregate_type    text        DEFAULT NULL,
    since             timestamptz DEFAULT NULL,
    until             timestamptz DEFAULT NULL,
    error_contains    text        DEFAULT NULL,
    error_fingerprint text        DEFAULT NULL,
    max_events        bigint      DEFAULT NULL,
    batch_size        integer     DEFAULT 5000,
    actor             text        DEFAULT NULL,
    after_id          bigint      DEFAULT 0,
    destination       text        DEFAULT NULL,
    OUT processed     bigint,
    OUT skipped       bigint,
    OUT failed        bigint,
    OUT last_id       bigint
)
    LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    who     constant text := COALESCE(actor, session_user::text);
    wanted  integer;
    ids     bigint[];
    locked  bigint[];
    -- Aggregates (ROW(aggregate_type, aggregate_id)::text) with an event left dead in this run,
    -- as the keys of a jsonb object: their later events stay dead as well. A key look-up is a
    -- binary search (a text[] compared with <> ALL is walked whole for every row, which made a
    -- run with 8 failed batches of 5,000 ten times slower). A variable: not undone by a failed
    -- batch's rollback.
    held    jsonb := '{}';
    n       bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION 'redrive_dead_events: batch_size must be at least 1'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF max_events IS NOT NULL AND max_events < 0 THEN
        RAISE EXCEPTION 'redrive_dead_events: max_events must not be negative'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    processed := 0; skipped := 0; failed := 0; last_id := COALESCE(after_id, 0);
    LOOP
        wanted := CASE WHEN max_events IS NULL THEN batch_size
                       ELSE least(batch_size, max_events - processed)::integer END;
        EXIT WHEN wanted <= 0;
        -- The next matching dead ids, unlocked: what is "there" whoever holds it.
        EXECUTE $q$
            SELECT array_agg(id ORDER BY id) FROM (
                SELECT e.id FROM outbox_event e
                 WHERE e.status = 'dead' AND e.id > $7
                   AND ($1 IS NULL OR e.event_type = $1)
                   AND ($2 IS NULL OR e.aggregate_type = $2)
                   AND ($3 IS NULL OR e.dead_at >= $3)
                   AND ($4 IS NULL OR e.dead_at < $4)
                   AND ($5 IS NULL OR e.last_error ILIKE outbox_error_like($5))
                   AND ($6 IS NULL OR e.id IN (SELECT f.event_id FROM outbox_dead_fingerprint f
                                                WHERE f.fingerprint = $6))
                   AND ($9 IS NULL OR e.destination = $9)
                 ORDER BY e.id LIMIT $8) picked$q$
            INTO ids
            USING event_type, aggregate_type, since, until, error_contains, error_fingerprint,
                  last_id, wanted, destination;
        EXIT WHEN ids IS NULL;
        last_id := ids[array_length(ids, 1)];
        BEGIN
            SELECT array_agg(o.id) INTO locked
              FROM (SELECT e.id FROM outbox_event e
                     WHERE e.id = ANY(ids) AND e.status = 'dead'
                       FOR UPDATE SKIP LOCKED) o;
            -- A row not locked is held elsewhere (or no longer dead): hold its aggregate back.
            held := held || COALESCE((
                SELECT jsonb_object_agg(ROW(e.aggregate_type, e.aggregate_id)::text, true)
                  FROM outbox_event e
                 WHERE e.id = ANY(ids) AND e.id <> ALL(COALESCE(locked, '{}'))), '{}');
            WITH redriven AS (
                UPDATE outbox_event o
                   SET status = 'pending',
                       attempts = 0,
                       next_attempt_at = now(),
                       locked_by = NULL,
                       locked_until = NULL,
                       lease_token = NULL,
                       dead_at = NULL,
                       updated_at = now(),
                       redrive_count = o.redrive_count + 1,
                       last_redriven_at = now(),
                       last_redriven_by = who
                 WHERE o.id = ANY(COALESCE(locked, '{}')) AND o.status = 'dead'
                   AND (held = '{}' OR NOT held ? ROW(o.aggregate_type, o.aggregate_id)::text)
                RETURNING o.id
            ), unmirrored AS (
                DELETE FROM outbox_dead_fingerprint f USING redriven r WHERE f.event_id = r.id
            )
            SELECT count(*) INTO n FROM redriven;
            processed := processed + n;
            skipped := skipped + array_length(ids, 1) - n;
        EXCEPTION WHEN OTHERS THEN
            failed := failed + array_length(ids, 1);
            held := held || COALESCE((
                SELECT jsonb_object_agg(ROW(e.aggregate_type, e.aggregate_id)::text, true)
                  FROM outbox_event e
                 WHERE e.id = ANY(ids)), '{}');
            RAISE WARNING 'redrive_dead_events: batch after id % failed: %',
                ids[1] - 1, SQLERRM;
        END;
    END LOOP;
    IF processed > 0 THEN
        PERFORM pg_notify('dispatchbox_outbox', '');
    END IF;
END
$fn$;
-- ==== end 0014 ====
