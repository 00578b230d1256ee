-- Named queries for PostgreSQL. Parameters are written :name; the store turns them into
-- $n placeholders when it loads this file.

-- name: get_meta
SELECT value FROM meta WHERE key = :key;

-- name: set_meta
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: set_meta_if_absent
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING;

-- name: get_tenant
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE id = :tenant_id;

-- name: list_tenants
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE (NOT :active_only::boolean OR active) ORDER BY id;

-- name: tenant_by_key
SELECT id, active, config, secrets, api_key_hash, api_key_expires_at, suspended, created_at, updated_at
FROM tenants WHERE api_key_hash = :key_hash;

-- name: put_tenant
-- An existing tenant keeps its key hash and suspension; xmax = 0 only on a fresh insert.
INSERT INTO tenants (id, active, config, secrets, api_key_hash, api_key_expires_at, suspended,
                     created_at, updated_at)
VALUES (:id, :active, :config::jsonb, :secrets, :api_key_hash, :api_key_expires_at,
        :suspended::jsonb, :now_text, :now_text)
ON CONFLICT (id) DO UPDATE SET
    active = excluded.active, config = excluded.config, secrets = excluded.secrets,
    api_key_expires_at = excluded.api_key_expires_at, updated_at = excluded.updated_at
RETURNING (xmax = 0) AS created;

-- name: set_api_key
UPDATE tenants SET api_key_hash = :key_hash, api_key_expires_at = :expires,
       updated_at = :now_text
WHERE id = :tenant_id;

-- name: set_suspended
UPDATE tenants SET suspended = :suspended::jsonb, updated_at = :now_text WHERE id = :tenant_id;

-- name: delete_tenant
-- Its accounts go with it (ON DELETE CASCADE).
DELETE FROM tenants WHERE id = :tenant_id;

-- name: delete_tenant_events
DELETE FROM events WHERE tenant_id = :tenant_id;

-- name: delete_tenant_messages
DELETE FROM messages WHERE tenant_id = :tenant_id;

-- name: delete_tenant_blocks
DELETE FROM meta WHERE starts_with(key, 'rate_block:' || :tenant_id::text || '/');

-- name: delete_account_block
DELETE FROM meta WHERE key = 'rate_block:' || :tenant_id::text || '/' || :account_id::text;

-- name: rate_blocks
-- Accounts another instance found over a limit: skipped until the window frees.
SELECT key, value::bigint AS until FROM meta WHERE key = ANY(:keys::text[]);

-- name: delete_tenant_rates
DELETE FROM rate_sends
WHERE scope = 't:' || :tenant_id::text OR starts_with(scope, 'a:' || :tenant_id::text || '/');

-- name: get_account
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts WHERE tenant_id = :tenant_id AND id = :account_id;

-- name: list_accounts
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts WHERE tenant_id = :tenant_id ORDER BY id;

-- name: all_accounts
SELECT tenant_id, id, config, secrets, submission_hash, created_at, updated_at
FROM accounts ORDER BY tenant_id, id;

-- name: upsert_account
INSERT INTO accounts (tenant_id, id, config, secrets, submission_hash, created_at, updated_at)
VALUES (:tenant_id, :id, :config::jsonb, :secrets, :submission_hash, :now_text, :now_text)
ON CONFLICT (tenant_id, id) DO UPDATE SET
    config = excluded.config, secrets = excluded.secrets,
    submission_hash = excluded.submission_hash, updated_at = excluded.updated_at;

-- name: delete_account
DELETE FROM accounts WHERE tenant_id = :tenant_id AND id = :account_id;

-- name: open_messages_of_account
SELECT seq FROM messages
WHERE tenant_id = :tenant_id AND account_id = :account_id
  AND status NOT IN ('sent', 'error', 'bounced', 'suppressed')
ORDER BY seq
FOR UPDATE;

-- name: message_state
SELECT seq, status, intake_error FROM messages
WHERE tenant_id = :tenant_id AND client_id = :client_id
FOR UPDATE;

-- name: insert_message
-- Nothing is returned when another transaction stored the same id first.
INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued, priority, due_ts,
                      deferred_ts, batch_code, retry_count, intake_error, is_pec, payload, raw,
                      envelope_from, error, error_ts, created_ts, updated_ts,
                      header_message_id, content)
VALUES (:pk, :tenant_id, :client_id, :account_id, :status, :queued, :priority, :due_ts,
        :deferred_ts, :batch_code, 0, :intake_error, :is_pec, :payload, :raw,
        :envelope_from, :error, :error_ts, :now, :now, :header_message_id, :content)
ON CONFLICT (tenant_id, client_id) DO NOTHING
RETURNING seq;

-- name: existing_messages
-- The rows a batch would replace, locked as message_state locks one, in key order (two
-- batches naming the same ids in different orders do not deadlock here).
SELECT m.tenant_id, m.client_id FROM messages m
JOIN unnest(:tenant_ids::text[], :client_ids::text[]) AS k (tenant_id, client_id)
  ON m.tenant_id = k.tenant_id AND m.client_id = k.client_id
ORDER BY m.tenant_id, m.client_id
FOR UPDATE OF m;

-- name: insert_messages
-- A batch of new ids in one statement; seq follows the array order. Ids another transaction
-- stored first are left out of the result (the caller takes them one by one).
INSERT INTO messages (pk, tenant_id, client_id, account_id, status, queued, priority, due_ts,
                      deferred_ts, batch_code, retry_count, intake_error, is_pec, payload, raw,
                      envelope_from, error, error_ts, created_ts, updated_ts,
                      header_message_id, content)
SELECT pk, tenant_id, client_id, account_id, status, queued, priority, due_ts, deferred_ts,
       batch_code, 0, intake_error, is_pec, payload, raw, envelope_from, error, error_ts,
       now, now, header_message_id, content
FROM unnest(:pks::text[], :tenant_ids::text[], :client_ids::text[], :account_ids::text[],
            :statuses::text[], :queueds::smallint[], :priorities::smallint[],
            :due_tss::bigint[], :deferred_tss::bigint[], :batch_codes::text[],
            :intake_errors::boolean[], :is_pecs::boolean[], :payloads::text[],
            :raws::bytea[], :envelope_froms::text[], :errors::text[], :error_tss::bigint[],
            :nows::float8[], :header_message_ids::text[], :contents::text[])
     WITH ORDINALITY AS r (pk, tenant_id, client_id, account_id, status, queued, priority,
                           due_ts, deferred_ts, batch_code, intake_error, is_pec, payload,
                           raw, envelope_from, error, error_ts, now, header_message_id, content,
                           n)
ORDER BY n
ON CONFLICT (tenant_id, client_id) DO NOTHING
RETURNING tenant_id, client_id, seq;

-- name: upsert_message
UPDATE messages SET account_id = :account_id, status = :status, queued = :queued,
       priority = :priority, due_ts = :due_ts, deferred_ts = :deferred_ts,
       batch_code = :batch_code, retry_count = 0, intake_error = false, is_pec = :is_pec,
       payload = :payload, content = :content, raw = :raw, envelope_from = :envelope_from,
       header_message_id = :header_message_id, date_ts = NULL,
       error = NULL, error_ts = NULL, updated_ts = :now
WHERE seq = :seq;

-- name: insert_event
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
VALUES (:seq, :tenant_id, :event_type, :event_ts, :description, :metadata);

-- name: notify_wake
SELECT pg_notify('mailproxy_wake', '');

-- name: promote_due
-- Rows another transaction holds are promoted in the next second (no waiting, no deadlock).
UPDATE messages SET queued = 1
WHERE seq IN (SELECT seq FROM messages WHERE queued = 2 AND due_ts <= :now_int
              FOR UPDATE SKIP LOCKED);

-- name: claim_accounts
SELECT a.tenant_id, a.id, a.config, t.config AS tenant_config
FROM accounts a JOIN tenants t ON t.id = a.tenant_id
WHERE t.active AND NOT t.suspended ? '*'
ORDER BY a.tenant_id, a.id;

-- name: lock_scopes
-- Transaction-level locks, taken in key order so that two claimers cannot deadlock.
SELECT count(pg_advisory_xact_lock(k))
FROM (SELECT DISTINCT hashtextextended(s, 0) AS k FROM unnest(:scopes::text[]) AS s
      ORDER BY 1) AS keys;

-- name: claim
-- Every listed account gets up to n of its due rows (priority, then enqueue order) through
-- the messages_ready index; rows other claimers hold are skipped; at most max_total in all,
-- accounts in list order.
WITH acct AS (
    SELECT * FROM unnest(:tenant_ids::text[], :account_ids::text[], :ns::int[])
        WITH ORDINALITY AS a (tenant_id, account_id, n, ord)
), picked AS (
    SELECT a.ord, m.seq, m.priority
    FROM acct a
    JOIN tenants t ON t.id = a.tenant_id AND t.active AND NOT t.suspended ? '*'
    CROSS JOIN LATERAL (
        SELECT seq, priority FROM messages
        WHERE queued = 1 AND tenant_id = a.tenant_id AND account_id = a.account_id
          AND (batch_code IS NULL OR NOT t.suspended ? batch_code)
        ORDER BY priority, seq
        LIMIT a.n
        FOR UPDATE SKIP LOCKED
    ) m
), capped AS (
    SELECT seq FROM picked ORDER BY ord, priority, seq LIMIT :max_total
)
UPDATE messages SET status = 'sending', queued = NULL, lease_owner = :owner,
       lease_until = :until, date_ts = COALESCE(date_ts, :now_int), updated_ts = :now
WHERE seq IN (SELECT seq FROM capped)
RETURNING seq, pk, tenant_id, client_id, account_id, priority, retry_count, created_ts,
          date_ts, payload, content, raw, envelope_from;

-- name: claimed_by
-- The rows a claim statement of this owner and lease end took (its retry adopts them when
-- the reply of an attempt that committed was lost).
SELECT seq, pk, tenant_id, client_id, account_id, priority, retry_count, created_ts,
       date_ts, payload, content, raw, envelope_from
FROM messages
WHERE lease_owner = :owner AND lease_until = :until AND status = 'sending'
ORDER BY priority, seq;

-- name: ready_head
SELECT m.seq FROM messages m JOIN tenants t ON t.id = m.tenant_id
WHERE m.queued = 1 AND m.tenant_id = :tenant_id AND m.account_id = :account_id
  AND (m.batch_code IS NULL OR NOT t.suspended ? m.batch_code)
ORDER BY m.priority, m.seq
LIMIT :n
FOR UPDATE OF m SKIP LOCKED;

-- name: count_sending_account
SELECT count(*) FROM messages
WHERE status = 'sending' AND tenant_id = :tenant_id AND account_id = :account_id;

-- name: count_sending_tenant
SELECT count(*) FROM messages WHERE status = 'sending' AND tenant_id = :tenant_id;

-- name: rate_sends
SELECT ts, n FROM rate_sends WHERE scope = :scope AND ts > :since;

-- name: prune_rate_sends
DELETE FROM rate_sends WHERE ts <= :before;

-- name: defer_rate_limited
UPDATE messages SET status = 'deferred', queued = 2, due_ts = :until, deferred_ts = :until,
       updated_ts = :now
WHERE seq = :seq;

-- name: fail_message
UPDATE messages SET status = :status, queued = NULL, lease_owner = NULL, lease_until = NULL,
       error = :error, error_ts = :now_int, updated_ts = :now
WHERE seq = :seq;

-- name: finish_sent
-- A group of Sent outcomes in one statement (atomic without BEGIN/COMMIT round trips): the
-- rows still owned, locked in seq order first so that groups and acknowledgements never
-- deadlock, become sent; their rate-window counts are added, one row per (scope, second)
-- in key order; their events are inserted in array order, so event ids follow it. Returns
-- the seqs finished: an outcome whose lease was lost changes nothing.
WITH owned AS (
    SELECT m.seq, u.now
    FROM messages m
    JOIN unnest(:seqs::bigint[], :owners::text[], :nows::float8[]) AS u (seq, owner, now)
      ON m.seq = u.seq
    WHERE m.lease_owner = u.owner AND m.status = 'sending'
    ORDER BY m.seq
    FOR UPDATE OF m
), done AS (
    UPDATE messages m SET status = 'sent', lease_owner = NULL, lease_until = NULL,
           sent_ts = floor(owned.now)::bigint, error = NULL, error_ts = NULL,
           updated_ts = owned.now
    FROM owned
    WHERE m.seq = owned.seq
    RETURNING m.seq
), counted AS (
    INSERT INTO rate_sends (scope, ts, n)
    SELECT r.scope, r.ts, count(*)::int
    FROM unnest(:rate_seqs::bigint[], :rate_scopes::text[], :rate_tss::bigint[])
         AS r (seq, scope, ts)
    JOIN done ON done.seq = r.seq
    GROUP BY r.scope, r.ts
    ORDER BY r.scope, r.ts
    ON CONFLICT (scope, ts) DO UPDATE SET n = rate_sends.n + excluded.n
), logged AS (
    INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
    SELECT e.seq, e.tenant_id, e.event_type, e.event_ts, e.description, e.metadata
    FROM unnest(:seqs::bigint[], :tenant_ids::text[], :event_types::text[],
                :event_tss::bigint[], :descriptions::text[], :metadatas::text[])
         WITH ORDINALITY AS e (seq, tenant_id, event_type, event_ts, description, metadata, ord)
    JOIN done ON done.seq = e.seq
    ORDER BY e.ord
)
SELECT seq FROM done;

-- name: finished_sent_at
-- Of the given rows, those already sent at exactly the given outcome time (a retried
-- finish_sent whose first attempt committed).
SELECT m.seq
FROM messages m
JOIN unnest(:seqs::bigint[], :nows::float8[]) AS u (seq, now) ON m.seq = u.seq
WHERE m.status = 'sent' AND m.updated_ts = u.now;

-- name: insert_events
-- Inserted in array order, so event ids follow it.
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
SELECT * FROM unnest(:seqs::bigint[], :tenant_ids::text[], :event_types::text[],
                     :event_tss::bigint[], :descriptions::text[], :metadatas::text[]);

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
UPDATE messages SET lease_until = :until
WHERE seq = ANY(:seqs::bigint[]) AND lease_owner = :owner AND status = 'sending';

-- name: release
UPDATE messages SET status = CASE WHEN deferred_ts IS NULL THEN 'pending'
                                  WHEN retry_count > 0 THEN 'deferred' ELSE 'scheduled' END,
       queued = 1, lease_owner = NULL, lease_until = NULL, updated_ts = :now
WHERE seq = ANY(:seqs::bigint[]) AND lease_owner = :owner AND status = 'sending';

-- name: expired_leases
-- Locked rows are being finished by their owner right now: not lost.
SELECT seq, tenant_id, retry_count FROM messages
WHERE status = 'sending' AND lease_until < :now
ORDER BY seq
FOR UPDATE SKIP LOCKED;

-- name: all_sending
SELECT seq, tenant_id, retry_count FROM messages
WHERE status = 'sending'
ORDER BY seq
FOR UPDATE SKIP LOCKED;

-- name: requeue_lost
UPDATE messages SET status = CASE WHEN deferred_ts IS NULL THEN 'pending'
                                  WHEN retry_count > 0 THEN 'deferred' ELSE 'scheduled' END,
       queued = 1, retry_count = retry_count + 1, lease_owner = NULL, lease_until = NULL,
       updated_ts = :now
WHERE seq = :seq AND status = 'sending';

-- name: count_open
SELECT count(*) FROM messages
WHERE status NOT IN ('sent', 'error', 'bounced', 'suppressed')
  AND (:tenant_id::text IS NULL OR tenant_id = :tenant_id)
  AND (:batch_code::text IS NULL OR batch_code = :batch_code);

-- name: list_messages
-- A due scheduled/deferred row is listed (and filtered) as pending (contract §5.1).
-- last_event_error: the reason of the latest failed attempt (its events_message index).
SELECT messages.*,
       (SELECT e.description FROM events e
        WHERE e.message_seq = messages.seq AND e.event_type IN ('deferred', 'error')
        ORDER BY e.event_id DESC LIMIT 1) AS last_event_error
FROM messages
WHERE tenant_id = :tenant_id
  AND (NOT :active_only::boolean OR status NOT IN ('sent', 'error', 'bounced', 'suppressed'))
  AND (:status::text IS NULL
       OR (:status = 'pending' AND (status = 'pending'
           OR (status IN ('scheduled', 'deferred')
               AND (deferred_ts IS NULL OR deferred_ts <= :now))))
       OR (:status IN ('scheduled', 'deferred') AND status = :status AND deferred_ts > :now)
       OR (:status NOT IN ('pending', 'scheduled', 'deferred') AND status = :status))
ORDER BY created_ts DESC, seq DESC
LIMIT :limit OFFSET :offset;

-- name: list_all_messages
-- Every tenant's messages for the admin, newest enqueued first, a page after `before`
-- (a seq): keyset pagination on the primary key, so a page costs the same at any depth.
-- The status filter is list_messages' own: change both together.
SELECT messages.*,
       (SELECT e.description FROM events e
        WHERE e.message_seq = messages.seq AND e.event_type IN ('deferred', 'error')
        ORDER BY e.event_id DESC LIMIT 1) AS last_event_error
FROM messages
WHERE seq < COALESCE(:before::bigint, 9223372036854775807)  -- a range even in a generic plan
  AND (NOT :active_only::boolean OR status NOT IN ('sent', 'error', 'bounced', 'suppressed'))
  AND (:status::text IS NULL
       OR (:status = 'pending' AND (status = 'pending'
           OR (status IN ('scheduled', 'deferred')
               AND (deferred_ts IS NULL OR deferred_ts <= :now))))
       OR (:status IN ('scheduled', 'deferred') AND status = :status AND deferred_ts > :now)
       OR (:status NOT IN ('pending', 'scheduled', 'deferred') AND status = :status))
ORDER BY seq DESC
LIMIT :limit;

-- name: delete_messages
DELETE FROM messages WHERE tenant_id = :tenant_id AND client_id = ANY(:ids::text[])
RETURNING seq, client_id;

-- name: delete_events_of
DELETE FROM events WHERE message_seq = ANY(:seqs::bigint[]);

-- name: history
SELECT message_seq, event_id, event_type, event_ts, description, metadata, reported_ts
FROM events WHERE message_seq = ANY(:seqs::bigint[]) ORDER BY event_id;
