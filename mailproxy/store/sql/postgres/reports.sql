-- Named queries of the report loop, retention, instance settings and command log, for
-- PostgreSQL. Parameters are written :name, as in queries.sql.

-- name: pending_event_counts
SELECT tenant_id, count(*) FROM events WHERE reported_ts IS NULL GROUP BY tenant_id;

-- name: pending_events
SELECT e.event_id, m.pk, e.tenant_id, m.account_id, m.client_id, e.event_type, e.event_ts,
       e.description, e.metadata
FROM events e LEFT JOIN messages m ON m.seq = e.message_seq
WHERE e.tenant_id = :tenant_id AND e.reported_ts IS NULL
ORDER BY e.event_id LIMIT :limit;

-- name: lock_tenant_acks
-- Acknowledgements of one tenant run one at a time across instances: two of them would
-- otherwise lock the same message rows in different orders and deadlock.
SELECT pg_advisory_xact_lock(hashtextextended('report-ack/' || :tenant_id::text, 0));

-- name: try_lock_tenant_acks
SELECT pg_try_advisory_xact_lock(hashtextextended('report-ack/' || :tenant_id::text, 0));

-- name: ack_messages
-- Message rows are locked in seq order, as a group of outcomes locks them (no deadlock).
UPDATE messages SET reported_ts = :now
WHERE seq IN (SELECT m.seq FROM messages m
              WHERE m.seq IN (SELECT message_seq FROM events
                              WHERE tenant_id = :tenant_id AND reported_ts IS NULL
                                AND event_id = ANY(:ids::bigint[]))
              ORDER BY m.seq
              FOR UPDATE);

-- name: ack_events
UPDATE events SET reported_ts = :now
WHERE tenant_id = :tenant_id AND reported_ts IS NULL AND event_id = ANY(:ids::bigint[]);

-- name: ack_tenant_messages
UPDATE messages SET reported_ts = :now
WHERE seq IN (SELECT m.seq FROM messages m
              WHERE m.seq IN (SELECT message_seq FROM events
                              WHERE tenant_id = :tenant_id AND reported_ts IS NULL)
              ORDER BY m.seq
              FOR UPDATE);

-- name: ack_tenant_events
UPDATE events SET reported_ts = :now WHERE tenant_id = :tenant_id AND reported_ts IS NULL;

-- name: get_sync
SELECT tenant_id, last_sync_ts, last_call_ts, consecutive_failures, retry_at, last_error,
       next_sync_after, resync_at
FROM tenant_sync WHERE tenant_id = :tenant_id;

-- name: list_sync
SELECT tenant_id, last_sync_ts, last_call_ts, consecutive_failures, retry_at, last_error,
       next_sync_after, resync_at
FROM tenant_sync ORDER BY tenant_id;

-- name: put_sync
-- Never touches the report lease columns.
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
DELETE FROM tenant_sync WHERE tenant_id = :tenant_id;

-- name: acquire_report_lease
-- Atomic across instances: ON CONFLICT locks the existing row and evaluates the WHERE on
-- its latest committed version, so of two concurrent acquirers the second sees the first's
-- lease and updates nothing. "INSERT 0 1" when the lease was taken or renewed.
INSERT INTO tenant_sync (tenant_id, report_owner, report_lease_until)
VALUES (:tenant_id, :owner, :until)
ON CONFLICT (tenant_id) DO UPDATE SET
    report_owner = excluded.report_owner, report_lease_until = excluded.report_lease_until
WHERE tenant_sync.report_owner IS NULL OR tenant_sync.report_owner = excluded.report_owner
   OR tenant_sync.report_lease_until < :now;

-- name: release_report_lease
UPDATE tenant_sync SET report_owner = NULL, report_lease_until = NULL
WHERE tenant_id = :tenant_id AND report_owner = :owner;

-- name: purge_candidates
-- Rows another transaction holds (an instance purging too, a re-post) are left to it.
SELECT seq FROM messages m
WHERE m.reported_ts IS NOT NULL AND m.reported_ts < :before
  AND m.status IN ('sent', 'error', 'bounced', 'suppressed')
  AND (:tenant_id::text IS NULL OR m.tenant_id = :tenant_id)
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_seq = m.seq AND e.reported_ts IS NULL)
ORDER BY seq
LIMIT :chunk
FOR UPDATE SKIP LOCKED;

-- name: purge_events
DELETE FROM events WHERE message_seq = ANY(:seqs::bigint[]);

-- name: purge_messages
DELETE FROM messages WHERE seq = ANY(:seqs::bigint[]);

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

-- name: insert_commands
-- Rows in array order, so ids follow it.
INSERT INTO command_log (command_ts, endpoint, tenant_id, payload, response_status)
SELECT command_ts, endpoint, tenant_id, payload, response_status
FROM unnest(:command_tss::bigint[], :endpoints::text[], :tenant_ids::text[], :payloads::text[],
            :statuses::integer[]) WITH ORDINALITY
     AS r (command_ts, endpoint, tenant_id, payload, response_status, n)
ORDER BY n;

-- name: count_commands
SELECT count(*) FROM command_log
WHERE (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts::bigint IS NULL OR command_ts >= :since_ts)
  AND (:until_ts::bigint IS NULL OR command_ts <= :until_ts)
  AND (:endpoint::text IS NULL OR strpos(lower(endpoint), lower(:endpoint)) > 0);

-- name: list_commands
SELECT id, command_ts, endpoint, tenant_id, payload, response_status FROM command_log
WHERE (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts::bigint IS NULL OR command_ts >= :since_ts)
  AND (:until_ts::bigint IS NULL OR command_ts <= :until_ts)
  AND (:endpoint::text IS NULL OR strpos(lower(endpoint), lower(:endpoint)) > 0)
ORDER BY command_ts DESC, id DESC LIMIT :limit OFFSET :offset;

-- name: export_commands
SELECT id, command_ts, endpoint, tenant_id, payload, response_status FROM command_log
WHERE (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
  AND (:since_ts::bigint IS NULL OR command_ts >= :since_ts)
  AND (:until_ts::bigint IS NULL OR command_ts <= :until_ts)
  AND response_status BETWEEN 200 AND 299
ORDER BY command_ts, id;

-- name: prune_commands
DELETE FROM command_log WHERE command_ts < :before;
