-- Canaries in progress: what a restarted server needs to resume one (the release under
-- test, the live release it is judged against, its policy and the step it had reached).
CREATE TABLE canaries (
    deployment_id TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    release_number BIGINT NOT NULL,
    stable_release BIGINT NOT NULL,
    policy TEXT NOT NULL,
    step BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX canaries_environment ON canaries(environment_id);
