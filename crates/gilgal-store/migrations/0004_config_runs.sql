-- Releases become build artifact + config snapshot (Heroku's model): a config change, a
-- rollback or a promotion makes a new release that reuses an existing artifact directory.
-- `pruned` marks releases whose artifact was deleted by the keep-last-N policy.
ALTER TABLE releases ADD COLUMN config TEXT NOT NULL DEFAULT '{}';
ALTER TABLE releases ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE releases ADD COLUMN pruned BIGINT NOT NULL DEFAULT 0;

-- Per-environment data key (wrapped by the master key outside the database) and the size of
-- each process type (memory / CPU), beside the instance counts in `formation`.
ALTER TABLE environments ADD COLUMN data_key TEXT;
ALTER TABLE environments ADD COLUMN sizes TEXT NOT NULL DEFAULT '{}';

-- Config vars; a secret's value is sealed with the environment's data key.
CREATE TABLE config_vars (
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    secret BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (environment_id, name)
);

-- Scheduled commands per environment.
CREATE TABLE cron_jobs (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    schedule TEXT NOT NULL,
    command TEXT NOT NULL,
    allow_overlap BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- One-off runs (`gilgal run`, cron). A cron run is claimed by inserting (job, tick) before it
-- starts, so the unique key makes a tick run at most once, across restarts too.
CREATE TABLE runs (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    cron_job_id TEXT REFERENCES cron_jobs(id) ON DELETE SET NULL,
    tick BIGINT,
    release_number BIGINT,
    command TEXT NOT NULL,
    state TEXT NOT NULL,
    exit_code BIGINT,
    failure TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    UNIQUE (cron_job_id, tick)
);
CREATE INDEX runs_environment ON runs(environment_id, created_at);

CREATE TABLE run_logs (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
