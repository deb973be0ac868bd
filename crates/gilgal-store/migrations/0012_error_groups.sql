-- Tracebacks in app output (Python, Node.js, Rust panics), grouped by signature per
-- environment: a small built-in Sentry.
CREATE TABLE error_groups (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    signature TEXT NOT NULL,
    title TEXT NOT NULL,
    sample TEXT NOT NULL,
    occurrences BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    first_release BIGINT,
    last_release BIGINT,
    UNIQUE (environment_id, signature)
);
