-- Alerts. Every environment has one rule of each kind (gilgal-core's defaults); a row here
-- overrides the default of its kind.
CREATE TABLE alert_rules (
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    threshold DOUBLE PRECISION NOT NULL,
    for_seconds BIGINT NOT NULL,
    enabled BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (environment_id, kind)
);

-- Where an environment's notifications go: `webhook` (generic JSON signed with HMAC-SHA256,
-- the secret sealed with the environment's data key), `slack` (incoming webhook) or `email`.
CREATE TABLE alert_channels (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    secret_sealed TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX alert_channels_environment ON alert_channels(environment_id);

-- Incidents: an alert fires once and resolves once. At most one open alert per rule.
CREATE TABLE alerts (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    value DOUBLE PRECISION,
    threshold DOUBLE PRECISION NOT NULL,
    fired_at BIGINT NOT NULL,
    resolved_at BIGINT,
    resolved_message TEXT
);
CREATE UNIQUE INDEX alerts_open ON alerts(environment_id, kind) WHERE resolved_at IS NULL;
CREATE INDEX alerts_environment ON alerts(environment_id, fired_at);

-- The outbox: one row per alert, channel and event (firing, resolved), written with the
-- alert's change, delivered with retries until `delivered_at` or the attempts run out.
CREATE TABLE alert_notifications (
    alert_id TEXT NOT NULL REFERENCES alerts(id) ON DELETE CASCADE,
    channel_id TEXT NOT NULL REFERENCES alert_channels(id) ON DELETE CASCADE,
    event TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error TEXT,
    PRIMARY KEY (alert_id, channel_id, event)
);
CREATE INDEX alert_notifications_due ON alert_notifications(delivered_at, next_attempt_at);
