-- 0006_alert_channels: alert state per channel, and the "dead events left unattended" alert
-- (issue 20).
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
