-- Dashboard queries (issue 15). A queue page finds the end of a bounded window of the
-- listing order (bound over window), then filters the rows in it (page); {source} is one
-- of the source_* fragments (which index is walked), {match} the filter.

-- name: status_counts
SELECT tenant_id, status, n FROM status_counts
WHERE (:tenant_id IS NULL OR tenant_id = :tenant_id) AND n <> 0;

-- name: due_counts
-- Scheduled and deferred rows whose time has come read as pending (§5.1): the promoted ones
-- (messages_due_waiting) and those the next claim cycle will promote (messages_waiting).
SELECT tenant_id, status, COUNT(*) FROM messages INDEXED BY messages_due_waiting
WHERE queued = 1 AND status <> 'pending' AND deferred_ts <= :now
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY tenant_id, status
UNION ALL
SELECT tenant_id, status, COUNT(*) FROM messages INDEXED BY messages_waiting
WHERE queued = 2 AND due_ts <= :now AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY tenant_id, status;

-- name: minute_counts
SELECT minute, kind, SUM(n) FROM minute_counts
WHERE minute >= :since AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
GROUP BY minute, kind;

-- name: oldest_waiting
-- The head of each account's due rows per priority (messages_ready, one seek each), and the
-- due rows not promoted yet.
SELECT MIN(created_ts) FROM (
    SELECT created_ts FROM messages WHERE seq IN (
        SELECT (SELECT MIN(m.seq) FROM messages m
                WHERE m.queued = 1 AND m.tenant_id = a.tenant_id AND m.account_id = a.id
                  AND m.priority = p.value)
        FROM accounts a, json_each('[0,1,2,3]') p
        WHERE :tenant_id IS NULL OR a.tenant_id = :tenant_id)
    UNION ALL
    SELECT MIN(created_ts) FROM messages INDEXED BY messages_waiting
    WHERE queued = 2 AND due_ts <= :now AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
);

-- name: window
-- The scan window: the next :scan positions in listing order (an index-only scan).
SELECT created_ts, seq FROM messages {source}
ORDER BY created_ts DESC, seq DESC LIMIT :scan

-- name: page
-- Matching rows between the cursor and the end of the window, newest first.
SELECT seq, pk, client_id, tenant_id, account_id, status, deferred_ts, priority, batch_code,
       json_extract(payload, '$.subject'), json_extract(payload, '$.from'),
       json_extract(payload, '$.to'),
       created_ts, retry_count, error
FROM messages {source} AND (created_ts, seq) >= (:end_ts, :end_seq) AND {match}
ORDER BY created_ts DESC, seq DESC LIMIT :limit

-- name: source_tenant
INDEXED BY messages_listing
WHERE tenant_id = :tenant_id AND (created_ts, seq) < (:c_ts, :c_seq) AND created_ts >= :after

-- name: source_all
INDEXED BY messages_recent
WHERE (created_ts, seq) < (:c_ts, :c_seq) AND created_ts >= :after

-- name: source_unusual
INDEXED BY messages_unusual
WHERE status IN ('scheduled', 'deferred', 'error', 'bounced', 'suppressed')
  AND (created_ts, seq) < (:c_ts, :c_seq) AND created_ts >= :after

-- name: bound
-- How many positions the window holds and the oldest of them.
WITH w AS ({window})
SELECT (SELECT count(*) FROM w), created_ts, seq FROM w ORDER BY created_ts, seq LIMIT 1

-- name: match
(:tenant_id IS NULL OR tenant_id = :tenant_id)
AND (:pk IS NULL OR pk = :pk)
AND (:account_id IS NULL OR account_id = :account_id)
AND (:batch_code IS NULL OR batch_code = :batch_code)
AND (:priority IS NULL OR priority = :priority)
AND (:status IS NULL
     OR (:status = 'pending' AND (status = 'pending'
         OR (status IN ('scheduled', 'deferred') AND deferred_ts <= :now)))
     OR (:status IN ('scheduled', 'deferred') AND status = :status AND deferred_ts > :now)
     OR (:status NOT IN ('pending', 'scheduled', 'deferred') AND status = :status))
AND (:to IS NULL OR lower(json_extract(payload, '$.to')) LIKE :to ESCAPE '\')
AND (:sender IS NULL OR lower(json_extract(payload, '$.from')) LIKE :sender ESCAPE '\')
AND (:text IS NULL OR pk = :text_exact OR lower(client_id) LIKE :text ESCAPE '\'
     OR lower(json_extract(payload, '$.subject')) LIKE :text ESCAPE '\'
     OR lower(json_extract(payload, '$.to')) LIKE :text ESCAPE '\')

-- name: actionable
SELECT seq, tenant_id FROM messages
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND created_ts < :before AND created_ts >= :after AND {match}

-- name: retry
UPDATE messages SET queued = 1, due_ts = :now, deferred_ts = :now, updated_ts = :now
WHERE seq IN (SELECT value FROM json_each(:seqs)) AND status IN ('scheduled', 'deferred');

-- name: cancel_events
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
SELECT seq, tenant_id, 'error', :now, 'cancelled', '{"error_code":null}' FROM messages
WHERE seq IN (SELECT value FROM json_each(:seqs))
  AND status IN ('pending', 'scheduled', 'deferred')
ORDER BY seq;

-- name: cancel
UPDATE messages SET status = 'error', queued = NULL, error = 'cancelled', error_ts = :now,
       updated_ts = :now
WHERE seq IN (SELECT value FROM json_each(:seqs))
  AND status IN ('pending', 'scheduled', 'deferred');

-- name: message
SELECT seq, pk, client_id, tenant_id, account_id, status, deferred_ts, priority, batch_code,
       json_extract(payload, '$.subject'), json_extract(payload, '$.from'),
       json_extract(payload, '$.to'), created_ts, retry_count, error,
       payload, substr(raw, 1, 65536), length(raw), sent_ts, reported_ts, updated_ts,
       bounce_type, bounce_code, bounce_reason, bounce_ts
FROM messages WHERE pk = :pk;

-- name: message_events
SELECT event_id, event_type, event_ts, description, metadata, reported_ts
FROM events WHERE message_seq = :seq ORDER BY event_id;

-- name: message_attempts
SELECT started_ts, ended_ts, outcome FROM attempts WHERE message_seq = :seq ORDER BY id;

-- name: rate_use
SELECT scope,
       SUM(CASE WHEN ts > :now - 60 THEN n ELSE 0 END),
       SUM(CASE WHEN ts > :now - 3600 THEN n ELSE 0 END),
       SUM(n)
FROM rate_sends
WHERE scope IN (SELECT value FROM json_each(:scopes)) AND ts > :now - 86400
GROUP BY scope;

-- name: waiting_of_account
SELECT (SELECT COUNT(*) FROM messages
        WHERE queued = 1 AND tenant_id = :tenant_id AND account_id = :account_id)
     + (SELECT COUNT(*) FROM messages
        WHERE queued = 2 AND tenant_id = :tenant_id AND account_id = :account_id);

-- name: prune_minutes
DELETE FROM minute_counts WHERE minute < :before;

-- name: prune_counts
DELETE FROM status_counts WHERE n = 0;
