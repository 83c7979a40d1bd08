-- 0007_destinations: dead letters per destination (issue 15).
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
