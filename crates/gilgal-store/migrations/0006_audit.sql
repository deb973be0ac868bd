-- Append-only audit log of every mutating API call: who, when, from where, with which
-- credential, what, and how it ended. The store offers no update or delete on it.
CREATE TABLE audit_log (
    id TEXT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    actor_id TEXT,
    actor_email TEXT,
    credential TEXT,
    ip TEXT,
    action TEXT NOT NULL,
    path TEXT NOT NULL,
    status BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log(at);
CREATE INDEX audit_log_actor ON audit_log(actor_id, at);
