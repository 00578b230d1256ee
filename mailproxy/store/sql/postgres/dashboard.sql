-- Dashboard queries (issue 15). A queue page finds the end of a bounded window of the
-- listing order (bound over window), then filters the rows in it (page); {source} is one
-- of the source_* fragments (which index is walked), {match} the filter.
-- Counter tables are sharded per backend (005_dashboard.sql): readers sum the shards.

-- name: status_counts
SELECT tenant_id, status, sum(n)::bigint FROM status_counts
WHERE (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY tenant_id, status HAVING sum(n) <> 0;

-- name: due_counts
SELECT tenant_id, status, count(*) FROM messages
WHERE queued = 1 AND status <> 'pending' AND deferred_ts <= :now
  AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY tenant_id, status
UNION ALL
SELECT tenant_id, status, count(*) FROM messages
WHERE queued = 2 AND due_ts <= :now AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY tenant_id, status;

-- name: minute_counts
SELECT minute, kind, sum(n)::bigint FROM minute_counts
WHERE minute >= :since AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
GROUP BY minute, kind;

-- name: oldest_waiting
SELECT min(created_ts) FROM (
    -- A range on priority, not an equality: with priority pinned the planner reads the
    -- ORDER BY as seq alone and walks the primary key; this way only messages_ready serves it.
    SELECT (SELECT m.created_ts FROM messages m
            WHERE m.queued = 1 AND m.tenant_id = a.tenant_id AND m.account_id = a.id
              AND m.priority BETWEEN p AND p
            ORDER BY m.priority, m.seq LIMIT 1) AS created_ts
    FROM accounts a CROSS JOIN generate_series(0, 3) AS p
    WHERE :tenant_id::text IS NULL OR a.tenant_id = :tenant_id
    UNION ALL
    SELECT min(created_ts) FROM messages
    WHERE queued = 2 AND due_ts <= :now AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
) AS heads;

-- name: window
-- The scan window: the next :scan positions in listing order (an index-only scan).
SELECT created_ts, seq FROM messages {source}
ORDER BY created_ts DESC, seq DESC LIMIT :scan

-- name: page
-- Matching rows between the cursor and the end of the window, newest first.
SELECT seq, pk, client_id, tenant_id, account_id, status, deferred_ts, priority, batch_code,
       payload::jsonb ->> 'subject', payload::jsonb ->> 'from', (payload::jsonb -> 'to')::text,
       created_ts, retry_count, error
FROM messages {source} AND (created_ts, seq) >= (:end_ts::float8, :end_seq::bigint) AND {match}
ORDER BY created_ts DESC, seq DESC LIMIT :limit

-- name: source_tenant
WHERE tenant_id = :tenant_id AND (created_ts, seq) < (:c_ts::float8, :c_seq::bigint) AND created_ts >= :after::float8

-- name: source_all
WHERE (created_ts, seq) < (:c_ts::float8, :c_seq::bigint) AND created_ts >= :after::float8

-- name: source_unusual
WHERE status IN ('scheduled', 'deferred', 'error', 'bounced', 'suppressed')
  AND (created_ts, seq) < (:c_ts::float8, :c_seq::bigint) AND created_ts >= :after::float8

-- name: bound
-- How many positions the window holds and the oldest of them.
WITH w AS ({window})
SELECT (SELECT count(*) FROM w), created_ts, seq FROM w ORDER BY created_ts, seq LIMIT 1

-- name: match
(:tenant_id::text IS NULL OR tenant_id = :tenant_id)
AND (:pk::text IS NULL OR pk = :pk)
AND (:account_id::text IS NULL OR account_id = :account_id)
AND (:batch_code::text IS NULL OR batch_code = :batch_code)
AND (:priority::int IS NULL OR priority = :priority)
AND (:status::text IS NULL
     OR (:status = 'pending' AND (status = 'pending'
         OR (status IN ('scheduled', 'deferred') AND deferred_ts <= :now)))
     OR (:status IN ('scheduled', 'deferred') AND status = :status AND deferred_ts > :now)
     OR (:status NOT IN ('pending', 'scheduled', 'deferred') AND status = :status))
AND (:to::text IS NULL OR lower((payload::jsonb -> 'to')::text) LIKE :to)
AND (:sender::text IS NULL OR lower(payload::jsonb ->> 'from') LIKE :sender)
AND (:text::text IS NULL OR pk = :text_exact OR lower(client_id) LIKE :text
     OR lower(payload::jsonb ->> 'subject') LIKE :text
     OR lower((payload::jsonb -> 'to')::text) LIKE :text)

-- name: actionable
SELECT seq, tenant_id FROM messages
WHERE status = ANY(:statuses::text[])
  AND created_ts < :before::float8 AND created_ts >= :after::float8 AND {match}
ORDER BY seq
FOR UPDATE

-- name: retry
UPDATE messages SET queued = 1, due_ts = :now::bigint, deferred_ts = :now, updated_ts = :now
WHERE seq = ANY(:seqs::bigint[]) AND status IN ('scheduled', 'deferred');

-- name: cancel_events
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
SELECT seq, tenant_id, 'error', :now::bigint, 'cancelled', json_build_object('error_code', NULL)::text
FROM messages
WHERE seq = ANY(:seqs::bigint[]) AND status IN ('pending', 'scheduled', 'deferred')
ORDER BY seq;

-- name: cancel
UPDATE messages SET status = 'error', queued = NULL, error = 'cancelled', error_ts = :now::bigint,
       updated_ts = :now
WHERE seq = ANY(:seqs::bigint[]) AND status IN ('pending', 'scheduled', 'deferred');

-- name: message
SELECT seq, pk, client_id, tenant_id, account_id, status, deferred_ts, priority, batch_code,
       payload::jsonb ->> 'subject', payload::jsonb ->> 'from', (payload::jsonb -> 'to')::text,
       created_ts, retry_count, error,
       payload, substring(raw FROM 1 FOR 65536), length(raw), sent_ts, reported_ts, updated_ts,
       bounce_type, bounce_code, bounce_reason, bounce_ts
FROM messages WHERE pk = :pk;

-- name: message_events
SELECT event_id, event_type, event_ts, description, metadata, reported_ts
FROM events WHERE message_seq = :seq ORDER BY event_id;

-- name: message_attempts
SELECT started_ts, ended_ts, outcome FROM attempts WHERE message_seq = :seq ORDER BY id;

-- name: rate_use
SELECT scope,
       sum(CASE WHEN ts > :now - 60 THEN n ELSE 0 END)::bigint,
       sum(CASE WHEN ts > :now - 3600 THEN n ELSE 0 END)::bigint,
       sum(n)::bigint
FROM rate_sends
WHERE scope = ANY(:scopes::text[]) AND ts > :now - 86400
GROUP BY scope;

-- name: waiting_of_account
SELECT (SELECT count(*) FROM messages
        WHERE queued = 1 AND tenant_id = :tenant_id AND account_id = :account_id)
     + (SELECT count(*) FROM messages
        WHERE queued = 2 AND tenant_id = :tenant_id AND account_id = :account_id);

-- name: never_analyzed
-- Without statistics the planner sorts instead of walking the listing indexes (the store's
-- _plan_mode notes the same for the claim): the dashboard analyzes a table autovacuum has
-- not reached yet, once.
SELECT last_analyze IS NULL AND last_autoanalyze IS NULL
FROM pg_stat_user_tables WHERE relid = 'messages'::regclass;

-- name: fold_lock
SELECT pg_try_advisory_xact_lock(hashtextextended('mailproxy:dashboard:fold', 0));

-- name: fold_counts
-- Rows of backends that are gone move to shard 0; a locked row waits for the next fold.
WITH gone AS (
    SELECT tenant_id, status, shard FROM status_counts
    WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM status_counts c USING gone g
    WHERE c.tenant_id = g.tenant_id AND c.status = g.status AND c.shard = g.shard
    RETURNING c.tenant_id, c.status, c.n
)
INSERT INTO status_counts AS c (tenant_id, status, shard, n)
SELECT tenant_id, status, 0, sum(n) FROM moved GROUP BY tenant_id, status
ORDER BY tenant_id, status
ON CONFLICT (tenant_id, status, shard) DO UPDATE SET n = c.n + excluded.n;

-- name: fold_minutes
WITH gone AS (
    SELECT minute, tenant_id, kind, shard FROM minute_counts
    WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)
    FOR UPDATE SKIP LOCKED
), moved AS (
    DELETE FROM minute_counts c USING gone g
    WHERE c.minute = g.minute AND c.tenant_id = g.tenant_id AND c.kind = g.kind
      AND c.shard = g.shard
    RETURNING c.minute, c.tenant_id, c.kind, c.n
)
INSERT INTO minute_counts AS c (minute, tenant_id, kind, shard, n)
SELECT minute, tenant_id, kind, 0, sum(n) FROM moved GROUP BY minute, tenant_id, kind
ORDER BY minute, tenant_id, kind
ON CONFLICT (minute, tenant_id, kind, shard) DO UPDATE SET n = c.n + excluded.n;

-- name: prune_minutes
DELETE FROM minute_counts WHERE minute < :before;
