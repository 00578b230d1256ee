-- Large-file offload (§11), as the SQLite 003 in PostgreSQL types: one row per file
-- uploaded to a tenant's storage, so that the signed /download route can find it and the
-- cleanup task can delete it when it expires.
CREATE TABLE offloaded_files (
    file_id          text PRIMARY KEY,
    tenant_id        text NOT NULL,
    storage_url      text NOT NULL,
    object_key       text NOT NULL,
    filename         text NOT NULL,
    mime_type        text NOT NULL,
    size             bigint NOT NULL,
    created_ts       bigint NOT NULL,
    expires_ts       bigint NOT NULL,
    lifespan_days    bigint,
    downloaded_ts    bigint,
    delete_ts        bigint NOT NULL
);
-- The cleanup task takes the rows whose delete_ts (expiry, or first download + lifespan)
-- has passed.
CREATE INDEX offloaded_files_due ON offloaded_files (delete_ts);
