-- name: put_file
INSERT INTO offloaded_files (file_id, tenant_id, storage_url, object_key, filename,
    mime_type, size, created_ts, expires_ts, lifespan_days, downloaded_ts, delete_ts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)
ON CONFLICT (file_id) DO UPDATE SET storage_url = excluded.storage_url,
    object_key = excluded.object_key, filename = excluded.filename,
    mime_type = excluded.mime_type, size = excluded.size, expires_ts = excluded.expires_ts,
    lifespan_days = excluded.lifespan_days, delete_ts = excluded.delete_ts;

-- name: get_file
SELECT file_id, tenant_id, storage_url, object_key, filename, mime_type, size, created_ts,
       expires_ts, lifespan_days, downloaded_ts, delete_ts
FROM offloaded_files WHERE file_id = $1;

-- name: mark_downloaded
UPDATE offloaded_files
SET downloaded_ts = $1,
    delete_ts = CASE WHEN lifespan_days IS NULL THEN delete_ts
                     ELSE LEAST(delete_ts, $2 + lifespan_days * 86400) END
WHERE file_id = $3 AND downloaded_ts IS NULL;

-- name: due_files
SELECT file_id, tenant_id, storage_url, object_key, filename, mime_type, size, created_ts,
       expires_ts, lifespan_days, downloaded_ts, delete_ts
FROM offloaded_files WHERE delete_ts <= $1 ORDER BY delete_ts LIMIT $2;

-- name: delete_file
DELETE FROM offloaded_files WHERE file_id = $1;
