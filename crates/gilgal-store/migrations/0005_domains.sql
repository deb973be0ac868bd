-- Custom domains: extra hostnames an environment is served at (besides its default one).
CREATE TABLE domains (
    hostname TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX domains_environment ON domains(environment_id);
