-- name: put_file
INSERT INTO offloaded_files (file_id, tenant_id, storage_url, object_key, filename,
    mime_type, size, created_ts, expires_ts, lifespan_days, downloaded_ts, delete_ts)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
ON CONFLICT (file_id) DO UPDATE SET storage_url = excluded.storage_url,
    object_key = excluded.object_key, filename = excluded.filename,
    mime_type = excluded.mime_type, size = excluded.size, expires_ts = excluded.expires_ts,
    lifespan_days = excluded.lifespan_days, delete_ts = excluded.delete_ts;

-- name: get_file
SELECT file_id, tenant_id, storage_url, object_key, filename, mime_type, size, created_ts,
       expires_ts, lifespan_days, downloaded_ts, delete_ts
FROM offloaded_files WHERE file_id = ?;

-- name: mark_downloaded
UPDATE offloaded_files
SET downloaded_ts = ?,
    delete_ts = CASE WHEN lifespan_days IS NULL THEN delete_ts
                     ELSE MIN(delete_ts, ? + lifespan_days * 86400) END
WHERE file_id = ? AND downloaded_ts IS NULL;

-- name: due_files
SELECT file_id, tenant_id, storage_url, object_key, filename, mime_type, size, created_ts,
       expires_ts, lifespan_days, downloaded_ts, delete_ts
FROM offloaded_files WHERE delete_ts <= ? ORDER BY delete_ts LIMIT ?;

-- name: delete_file
DELETE FROM offloaded_files WHERE file_id = ?;
