-- 0004_alerting: shared alert state (issue 6) and an index for the redrive-outcome metric.
--
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
