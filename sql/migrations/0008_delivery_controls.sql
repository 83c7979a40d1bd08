-- 0008_delivery_controls: circuit breakers and rate limits per destination (issue 14).
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
