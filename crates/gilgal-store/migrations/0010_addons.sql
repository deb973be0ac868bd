-- Add-ons: managed backing services attached to an environment through config vars.
-- `resource` is the generated identifier of the database/role or server directory;
-- `credentials_sealed` is a JSON document sealed with the environment's data key.
CREATE TABLE addons (
    id TEXT PRIMARY KEY NOT NULL,
    environment_id TEXT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    var_prefix TEXT NOT NULL,
    resource TEXT NOT NULL,
    credentials_sealed TEXT NOT NULL,
    state TEXT NOT NULL,
    backup_schedule TEXT NOT NULL,
    backup_retention BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (environment_id, name)
);

-- Backups outlive their add-on (a destroyed add-on keeps its final backup), so no foreign
-- key. A scheduled backup claims its tick: UNIQUE (addon_id, tick) makes it run once.
CREATE TABLE addon_backups (
    id TEXT PRIMARY KEY NOT NULL,
    addon_id TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    cause TEXT NOT NULL,
    tick BIGINT,
    state TEXT NOT NULL,
    path TEXT,
    size BIGINT,
    sha256 TEXT,
    error TEXT,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    UNIQUE (addon_id, tick)
);
CREATE INDEX addon_backups_addon ON addon_backups(addon_id, started_at);
