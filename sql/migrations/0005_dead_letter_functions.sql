-- 0005_dead_letter_functions: dead-letter statistics and a batched redrive as SQL functions
-- (issue 20), so that a DBA runs them from psql or pg_cron without Python. OutboxRepository
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
