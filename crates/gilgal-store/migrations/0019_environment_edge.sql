-- What the edge enforces per environment (HTTPS redirect, HSTS, rate limits), as JSON owned
-- by the API's wire type; an environment without a row enforces nothing extra.
CREATE TABLE environment_edge (
    environment_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
