-- 0013_partitioned_outbox: an opt-in outbox partitioned by id range, retired a whole partition
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
