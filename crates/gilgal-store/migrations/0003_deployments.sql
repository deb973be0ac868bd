-- Environments, immutable releases, deployments with their recorded state transitions, and
-- build/deploy log lines. `environments.live_release` + `formation` are the desired state the
-- reconciler drives the runtime to.
CREATE TABLE environments (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    live_release BIGINT,
    formation TEXT NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

-- Every existing project gets its production environment (same id as the project).
INSERT INTO environments (id, project_id, name, live_release, formation, created_at, updated_at)
SELECT id, id, 'production', NULL, '{}', created_at, created_at FROM projects;

CREATE TABLE releases (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    artifact_dir TEXT NOT NULL,
    artifact TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (environment_id, number)
);

CREATE TABLE deployments (
    id TEXT PRIMARY KEY NOT NULL,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    release_number BIGINT,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    failure TEXT,
    state_deadline BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deployments_environment ON deployments(environment_id, created_at);

CREATE TABLE deployment_transitions (
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at BIGINT NOT NULL,
    note TEXT,
    PRIMARY KEY (deployment_id, seq)
);

CREATE TABLE deployment_logs (
    deployment_id TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    at BIGINT NOT NULL,
    stream TEXT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (deployment_id, seq)
);
