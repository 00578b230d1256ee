-- Large-file offload (§11): one row per file uploaded to a tenant's storage, so that the
-- signed /download route can find it and the cleanup task can delete it when it expires.
CREATE TABLE offloaded_files (
    file_id          TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL,
    storage_url      TEXT NOT NULL,
    object_key       TEXT NOT NULL,
    filename         TEXT NOT NULL,
    mime_type        TEXT NOT NULL,
    size             INTEGER NOT NULL,
    created_ts       INTEGER NOT NULL,
    expires_ts       INTEGER NOT NULL,
    lifespan_days    INTEGER,
    downloaded_ts    INTEGER,
    delete_ts        INTEGER NOT NULL
);
-- The cleanup task takes the rows whose delete_ts (expiry, or first download + lifespan)
-- has passed.
CREATE INDEX offloaded_files_due ON offloaded_files (delete_ts);
