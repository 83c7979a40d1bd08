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

-- ==== end 0002 ====

-- ==== 0003 dead-letter audit ====

-- ==== end 0003 ====
