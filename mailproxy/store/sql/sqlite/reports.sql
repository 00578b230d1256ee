-- Named queries of the report loop, retention and instance settings (the command log: commands.sql).

-- name: pending_event_counts
SELECT tenant_id, COUNT(*) FROM events WHERE reported_ts IS NULL GROUP BY tenant_id;

-- name: pending_events
SELECT e.event_id, m.pk, e.tenant_id, m.account_id, m.client_id, e.event_type, e.event_ts,
       e.description, e.metadata
FROM events e LEFT JOIN messages m ON m.seq = e.message_seq
WHERE e.tenant_id = ? AND e.reported_ts IS NULL
ORDER BY e.event_id LIMIT ?;

-- name: ack_messages
UPDATE messages SET reported_ts = :now
WHERE seq IN (SELECT message_seq FROM events
              WHERE tenant_id = :tenant_id AND reported_ts IS NULL
                AND event_id IN (SELECT value FROM json_each(:ids)));

-- name: ack_events
UPDATE events SET reported_ts = :now
WHERE tenant_id = :tenant_id AND reported_ts IS NULL
  AND event_id IN (SELECT value FROM json_each(:ids));

-- name: ack_tenant_messages
UPDATE messages SET reported_ts = :now
WHERE seq IN (SELECT message_seq FROM events WHERE tenant_id = :tenant_id AND reported_ts IS NULL);

-- name: ack_tenant_events
UPDATE events SET reported_ts = :now WHERE tenant_id = :tenant_id AND reported_ts IS NULL;

-- name: get_sync
SELECT tenant_id, last_sync_ts, last_call_ts, consecutive_failures, retry_at, last_error,
       next_sync_after, resync_at
FROM tenant_sync WHERE tenant_id = ?;

-- name: list_sync
SELECT tenant_id, last_sync_ts, last_call_ts, consecutive_failures, retry_at, last_error,
       next_sync_after, resync_at
FROM tenant_sync ORDER BY tenant_id;

-- name: put_sync
INSERT INTO tenant_sync (tenant_id, last_sync_ts, last_call_ts, consecutive_failures, retry_at,
                         last_error, next_sync_after, resync_at)
VALUES (:tenant_id, :last_sync_ts, :last_call_ts, :consecutive_failures, :retry_at,
        :last_error, :next_sync_after, :resync_at)
ON CONFLICT (tenant_id) DO UPDATE SET
    last_sync_ts = excluded.last_sync_ts, last_call_ts = excluded.last_call_ts,
    consecutive_failures = excluded.consecutive_failures, retry_at = excluded.retry_at,
    last_error = excluded.last_error, next_sync_after = excluded.next_sync_after,
    resync_at = excluded.resync_at;

-- name: delete_sync
DELETE FROM tenant_sync WHERE tenant_id = ?;

-- name: acquire_report_lease
INSERT INTO tenant_sync (tenant_id, report_owner, report_lease_until)
VALUES (:tenant_id, :owner, :until)
ON CONFLICT (tenant_id) DO UPDATE SET
    report_owner = excluded.report_owner, report_lease_until = excluded.report_lease_until
WHERE tenant_sync.report_owner IS NULL OR tenant_sync.report_owner = excluded.report_owner
   OR tenant_sync.report_lease_until < :now;

-- name: release_report_lease
UPDATE tenant_sync SET report_owner = NULL, report_lease_until = NULL
WHERE tenant_id = ? AND report_owner = ?;

-- name: purge_candidates
SELECT seq FROM messages m
WHERE m.reported_ts IS NOT NULL AND m.reported_ts < :before
  AND m.status IN ('sent', 'error', 'bounced', 'suppressed')
  AND (:tenant_id IS NULL OR m.tenant_id = :tenant_id)
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_seq = m.seq AND e.reported_ts IS NULL)
LIMIT 10000;

-- name: purge_events
DELETE FROM events WHERE message_seq IN (SELECT value FROM json_each(?));

-- name: purge_messages
DELETE FROM messages WHERE seq IN (SELECT value FROM json_each(?));

-- name: get_instance
SELECT name, bounce_enabled, bounce_imap_host, bounce_imap_port, bounce_imap_user,
       bounce_imap_password, bounce_imap_folder, bounce_imap_ssl, bounce_poll_interval,
       bounce_return_path, created_at, updated_at
FROM instance WHERE id = 1;

-- name: put_instance
INSERT INTO instance (id, name, bounce_enabled, bounce_imap_host, bounce_imap_port,
                      bounce_imap_user, bounce_imap_password, bounce_imap_folder, bounce_imap_ssl,
                      bounce_poll_interval, bounce_return_path, created_at, updated_at)
VALUES (1, :name, :bounce_enabled, :bounce_imap_host, :bounce_imap_port, :bounce_imap_user,
        :bounce_imap_password, :bounce_imap_folder, :bounce_imap_ssl, :bounce_poll_interval,
        :bounce_return_path, :now_text, :now_text)
ON CONFLICT (id) DO UPDATE SET
    name = excluded.name, bounce_enabled = excluded.bounce_enabled,
    bounce_imap_host = excluded.bounce_imap_host, bounce_imap_port = excluded.bounce_imap_port,
    bounce_imap_user = excluded.bounce_imap_user,
    bounce_imap_password = excluded.bounce_imap_password,
    bounce_imap_folder = excluded.bounce_imap_folder, bounce_imap_ssl = excluded.bounce_imap_ssl,
    bounce_poll_interval = excluded.bounce_poll_interval,
    bounce_return_path = excluded.bounce_return_path, updated_at = excluded.updated_at;
