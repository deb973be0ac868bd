-- What happened to an environment, newest last: deploys, crashes (exit code, OOM), restarts,
-- scale changes, health check failures and replacements.
CREATE TABLE environment_events (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX environment_events_environment ON environment_events(environment_id, at);

-- Health of each environment's web process per minute: how many checks ran and in how many
-- at least one instance answered (uptime = up / checks).
CREATE TABLE health_minutes (
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    minute BIGINT NOT NULL,
    checks BIGINT NOT NULL,
    up BIGINT NOT NULL,
    PRIMARY KEY (environment_id, minute)
);
