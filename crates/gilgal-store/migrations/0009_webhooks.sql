-- Push webhooks: a git host's pushes to one branch deploy that commit to one environment.
-- The shared secret is sealed with the environment's data key (never stored in clear).
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    repo_url TEXT NOT NULL,
    branch TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    created_by TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX webhooks_project ON webhooks(project_id);

-- Every authenticated delivery, claimed by the sender's delivery id so that a redelivery
-- never deploys twice.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    webhook_id TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    delivery_id TEXT,
    received_at BIGINT NOT NULL,
    event TEXT NOT NULL,
    reference TEXT,
    commit_id TEXT,
    outcome TEXT NOT NULL,
    detail TEXT,
    deployment_id TEXT,
    UNIQUE (webhook_id, delivery_id)
);
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries(webhook_id, received_at);
