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
