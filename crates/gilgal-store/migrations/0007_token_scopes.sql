-- Scoped API tokens: `full`, `read` (GET only) or `deploy` (read + deploy/redeploy/cancel),
-- optionally bound to one project or one environment.
ALTER TABLE api_tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'full';
ALTER TABLE api_tokens ADD COLUMN project_id TEXT;
ALTER TABLE api_tokens ADD COLUMN environment_id TEXT;
