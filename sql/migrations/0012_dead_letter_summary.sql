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
