-- TLS certificates the edge proxy serves, one per hostname (uploaded now, ACME later).
CREATE TABLE certificates (
    domain TEXT PRIMARY KEY NOT NULL,
    cert_chain_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    not_after BIGINT NOT NULL,
    source TEXT NOT NULL DEFAULT 'upload',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
