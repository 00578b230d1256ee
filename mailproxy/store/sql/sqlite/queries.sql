-- name: get_meta
SELECT value FROM meta WHERE key = ?;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (?, ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: get_tenant
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE id = ?;

-- name: list_tenants
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE (? = 0 OR active = 1) ORDER BY id;

-- name: tenant_by_key
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE api_key_hash = ?;

-- name: insert_tenant
INSERT INTO tenants (id, active, config, secrets, api_key_hash, api_key_expires_at, suspended,
                     created_at, updated_at)
VALUES (:id, :active, :config, :secrets, :api_key_hash, :api_key_expires_at, :suspended,
        :now_text, :now_text);

-- name: update_tenant
UPDATE tenants SET active = :active, config = :config, secrets = :secrets,
       api_key_expires_at = :api_key_expires_at, updated_at = :now_text
WHERE id = :id;

-- name: set_api_key
UPDATE tenants SET api_key_hash = ?, api_key_expires_at = ?, updated_at = ? WHERE id = ?;

-- name: set_suspended
UPDATE tenants SET suspended = ?, updated_at = ? WHERE id = ?;

-- name: delete_tenant
DELETE FROM tenants WHERE id = ?;

-- name: delete_tenant_accounts
DELETE FROM accounts WHERE tenant_id = ?;

-- name: delete_tenant_events
DELETE FROM events WHERE tenant_id = ?;

-- name: delete_tenant_messages
DELETE FROM messages WHERE tenant_id = ?;

-- name: delete_tenant_rates
-- A prefix test, not LIKE: tenant ids may contain '_', which LIKE reads as a wildcard.
DELETE FROM rate_sends
WHERE scope = 't:' || ?1 OR substr(scope, 1, length(?1) + 3) = 'a:' || ?1 || '/';

-- name: get_account
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts WHERE tenant_id = ? AND id = ?;

-- name: list_accounts
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts WHERE tenant_id = ? ORDER BY id;

-- name: all_accounts
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts ORDER BY tenant_id, id;

-- name: upsert_account
INSERT INTO accounts (tenant_id, id, config, secrets, submission_hash, created_at, updated_at)
VALUES (:tenant_id, :id, :config, :secrets, :submission_hash, :now_text, :now_text)
ON CONFLICT (tenant_id, id) DO UPDATE SET
    config = excluded.config, secrets = excluded.secrets,
    submission_hash = excluded.submission_hash, updated_at = excluded.updated_at;

-- name: delete_account
DELETE FROM accounts WHERE tenant_id = ? AND id = ?;

-- name: open_messages_of_account
SELECT seq, client_id FROM messages
WHERE tenant_id = ? AND account_id = ? AND status NOT IN ('sent', 'error', 'bounced', 'suppressed');

-- name: message_state
SELECT seq, status, intake_error FROM messages WHERE tenant_id = ? AND client_id = ?;

-- name: stored_ids
-- Which of some client ids of one tenant are stored; the IN list ("?, ?, ...") is added
-- by sqlite_batch.InList for the number of ids asked.
SELECT client_id FROM messages WHERE tenant_id = ? AND client_id IN;

-- name: insert_message
INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued, priority, due_ts,
                      deferred_ts, batch_code, retry_count, intake_error, is_pec, payload, raw,
                      envelope_from, error, error_ts, created_ts, updated_ts,
                      header_message_id, content)
VALUES (:pk, :tenant_id, :client_id, :account_id, :status, :queued, :priority, :due_ts,
        :deferred_ts, :batch_code, 0, :intake_error, :is_pec, :payload, :raw,
        :envelope_from, :error, :error_ts, :now, :now, :header_message_id, :content);

-- name: count_added
INSERT INTO status_counts (tenant_id, status, n) VALUES (?, ?, ?)
ON CONFLICT (tenant_id, status) DO UPDATE SET n = n + excluded.n;

-- name: upsert_message
UPDATE messages SET account_id = :account_id, status = :status, queued = :queued,
       priority = :priority, due_ts = :due_ts, deferred_ts = :deferred_ts,
       batch_code = :batch_code, retry_count = 0, intake_error = 0, is_pec = :is_pec,
       payload = :payload, content = :content, raw = :raw, envelope_from = :envelope_from,
       header_message_id = :header_message_id, date_ts = NULL, error = NULL, error_ts = NULL,
       updated_ts = :now
WHERE seq = :seq;

-- name: insert_event
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
VALUES (?, ?, ?, ?, ?, ?);

-- name: promote_due
UPDATE messages SET queued = 1 WHERE queued = 2 AND due_ts <= ?;

-- name: claim_tenants
SELECT id, active, config, suspended FROM tenants;

-- name: claim_accounts
SELECT tenant_id, id, config FROM accounts;

-- name: claim_account
UPDATE messages SET status = 'sending', queued = NULL, lease_owner = :owner,
       lease_until = :until, date_ts = COALESCE(date_ts, :now_int), updated_ts = :now
WHERE seq IN (
    SELECT seq FROM messages
    WHERE queued = 1 AND tenant_id = :tenant_id AND account_id = :account_id
      AND (batch_code IS NULL OR batch_code NOT IN (SELECT value FROM json_each(:held)))
    ORDER BY priority, seq LIMIT :n)
RETURNING seq, pk, tenant_id, client_id, account_id, priority, retry_count, created_ts,
          date_ts, payload, content, raw, envelope_from;

-- name: ready_head
SELECT seq, client_id FROM messages
WHERE queued = 1 AND tenant_id = :tenant_id AND account_id = :account_id
  AND (batch_code IS NULL OR batch_code NOT IN (SELECT value FROM json_each(:held)))
ORDER BY priority, seq LIMIT :n;

-- name: rate_sends
SELECT ts, n FROM rate_sends WHERE scope = ? AND ts > ?;

-- name: count_sending_account
SELECT COUNT(*) FROM messages WHERE status = 'sending' AND tenant_id = ? AND account_id = ?;

-- name: count_sending_tenant
SELECT COUNT(*) FROM messages WHERE status = 'sending' AND tenant_id = ?;

-- name: add_rate_send
INSERT INTO rate_sends (scope, ts, n) VALUES (?, ?, 1)
ON CONFLICT (scope, ts) DO UPDATE SET n = n + 1;

-- name: prune_rate_sends
DELETE FROM rate_sends WHERE ts <= ?;

-- name: defer_rate_limited
UPDATE messages SET status = 'deferred', queued = 2, due_ts = :until, deferred_ts = :until,
       updated_ts = :now
WHERE seq = :seq;

-- name: fail_message
UPDATE messages SET status = :status, queued = NULL, lease_owner = NULL, lease_until = NULL,
       error = :error, error_ts = :now_int, updated_ts = :now
WHERE seq = :seq;

-- name: finish_sent
UPDATE messages SET status = 'sent', lease_owner = NULL, lease_until = NULL,
       sent_ts = :now_int, error = NULL, error_ts = NULL, updated_ts = :now
WHERE seq = :seq AND lease_owner = :owner AND status = 'sending';

-- name: finish_deferred
UPDATE messages SET status = 'deferred', queued = :queued, lease_owner = NULL,
       lease_until = NULL, due_ts = :next_ts, deferred_ts = :next_ts,
       retry_count = :retry_count, updated_ts = :now
WHERE seq = :seq AND lease_owner = :owner AND status = 'sending';

-- name: finish_failed
UPDATE messages SET status = :status, lease_owner = NULL, lease_until = NULL,
       error = :error, error_ts = :now_int, updated_ts = :now
WHERE seq = :seq AND lease_owner = :owner AND status = 'sending';

-- name: renew
UPDATE messages SET lease_until = ? WHERE seq = ? AND lease_owner = ? AND status = 'sending';

-- name: release
UPDATE messages SET status = CASE WHEN deferred_ts IS NULL THEN 'pending'
                                  WHEN retry_count > 0 THEN 'deferred' ELSE 'scheduled' END,
       queued = 1, lease_owner = NULL, lease_until = NULL, updated_ts = ?
WHERE seq = ? AND lease_owner = ? AND status = 'sending';

-- name: expired_leases
SELECT seq, tenant_id, account_id, client_id, retry_count, deferred_ts FROM messages
WHERE status = 'sending' AND lease_until < ?;

-- name: all_sending
SELECT seq, tenant_id, account_id, client_id, retry_count, deferred_ts FROM messages
WHERE status = 'sending';

-- name: requeue_lost
UPDATE messages SET status = CASE WHEN deferred_ts IS NULL THEN 'pending'
                                  WHEN retry_count > 0 THEN 'deferred' ELSE 'scheduled' END,
       queued = 1, retry_count = retry_count + 1, lease_owner = NULL, lease_until = NULL,
       updated_ts = ?
WHERE seq = ? AND status = 'sending';

-- name: count_open
SELECT COUNT(*) FROM messages
WHERE status NOT IN ('sent', 'error', 'bounced', 'suppressed')
  AND (?1 IS NULL OR tenant_id = ?1) AND (?2 IS NULL OR batch_code = ?2);

-- name: delete_message_events
DELETE FROM events WHERE message_seq = ?;

-- name: delete_message
DELETE FROM messages WHERE seq = ?;

-- name: history
SELECT message_seq, event_id, event_type, event_ts, description, metadata, reported_ts
FROM events WHERE message_seq IN (SELECT value FROM json_each(?)) ORDER BY event_id;
