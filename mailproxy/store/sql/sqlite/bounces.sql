-- Bounces, suppressions and mailbox cursors (§12). Parameters are :named.

-- name: list_bounces
SELECT b.id, b.tenant_id, b.message_id, b.recipient, b.type, b.code, b.reason, b.created_ts,
       b.message_pk, e.reported_ts
FROM bounces b LEFT JOIN events e ON e.event_id = b.event_id
WHERE (:tenant_id IS NULL OR b.tenant_id = :tenant_id)
  AND (:before_id IS NULL OR b.id < :before_id)
ORDER BY b.id DESC LIMIT :limit;

-- name: count_suppressions
SELECT count(*) FROM suppressions
WHERE tenant_id = :tenant_id AND (:address IS NULL OR address = :address);

-- name: list_suppressions
SELECT tenant_id, address, reason, source, created_ts, bounce_code, message_id
FROM suppressions
WHERE tenant_id = :tenant_id AND (:address IS NULL OR address = :address)
  AND (:after_ts IS NULL OR created_ts < :after_ts
       OR (created_ts = :after_ts AND address < :after_address))
ORDER BY created_ts DESC, address DESC LIMIT :limit OFFSET :offset;

-- name: add_suppression
INSERT INTO suppressions (tenant_id, address, reason, source, bounce_code, message_id,
                          created_ts)
VALUES (:tenant_id, :address, :reason, :source, :bounce_code, :message_id, :now)
ON CONFLICT (tenant_id, address) DO NOTHING;

-- name: remove_suppression
DELETE FROM suppressions WHERE tenant_id = :tenant_id AND address = :address;

-- name: suppressed_among
SELECT address FROM suppressions
WHERE tenant_id = :tenant_id AND address IN (SELECT value FROM json_each(:addresses));

-- name: any_suppression
SELECT 1 FROM suppressions WHERE tenant_id = :tenant_id LIMIT 1;

-- name: message_by_pk
SELECT seq, pk, tenant_id, client_id, account_id, status, payload, envelope_from
FROM messages WHERE pk = :pk;

-- name: messages_by_client_id
SELECT seq, pk, tenant_id, client_id, account_id, status, payload, envelope_from
FROM messages WHERE client_id = :client_id LIMIT 50;

-- name: messages_by_header_message_id
-- Messages that went out with this client-supplied Message-ID (§12.2 rule 2), optionally of
-- one tenant and account (a PEC mailbox); the partial index of migration 009 answers it.
SELECT seq, pk, tenant_id, client_id, account_id, status, payload, envelope_from
FROM messages
WHERE header_message_id = :message_id
  AND (:tenant_id IS NULL OR tenant_id = :tenant_id)
  AND (:account_id IS NULL OR account_id = :account_id)
ORDER BY seq LIMIT 50;

-- name: insert_bounce
INSERT INTO bounces (tenant_id, message_seq, message_pk, message_id, recipient, type, code,
                     reason, fingerprint, created_ts)
VALUES (:tenant_id, :seq, :pk, :client_id, :recipient, :type, :code, :reason, :fingerprint,
        :now)
ON CONFLICT (fingerprint) DO NOTHING;

-- name: set_bounce_event
UPDATE bounces SET event_id = :event_id WHERE id = :id;

-- name: insert_bounce_event
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
VALUES (:seq, :tenant_id, 'bounce', :now, :reason, :metadata);

-- name: mark_bounced
UPDATE messages SET bounce_type = :type, bounce_code = :digits, bounce_reason = :reason,
       bounce_ts = :now,
       status = CASE WHEN :type = 'hard' AND status = 'sent' THEN 'bounced' ELSE status END,
       updated_ts = :now
WHERE seq = :seq;

-- name: count_soft_bounces
SELECT count(*) FROM bounces
WHERE tenant_id = :tenant_id AND recipient = :recipient AND type = 'soft'
  AND created_ts >= :since;

-- name: get_cursor
SELECT mailbox, uidvalidity, last_uid FROM mailbox_cursors WHERE mailbox = :mailbox;

-- name: put_cursor
INSERT INTO mailbox_cursors (mailbox, uidvalidity, last_uid, updated_ts)
VALUES (:mailbox, :uidvalidity, :last_uid, :now)
ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity,
    last_uid = excluded.last_uid, updated_ts = excluded.updated_ts;

-- name: acquire_lease
INSERT INTO poller_leases (name, owner, until) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE poller_leases.owner = excluded.owner OR poller_leases.until < :now;

-- name: release_lease
DELETE FROM poller_leases WHERE name = :name AND owner = :owner;

-- name: insert_pec_receipt
INSERT INTO pec_receipts (fingerprint, message_seq, created_ts) VALUES (:fingerprint, :seq, :now)
ON CONFLICT (fingerprint) DO NOTHING;

-- name: insert_pec_event
INSERT INTO events (message_seq, tenant_id, event_type, event_ts, description, metadata)
VALUES (:seq, :tenant_id, :event_type, :now, :details, :metadata);

-- name: pec_overdue
SELECT m.seq, m.tenant_id FROM messages m
WHERE m.is_pec = 1 AND m.status = 'sent' AND m.sent_ts <= :before
  AND m.tenant_id = :tenant_id AND m.account_id = :account_id
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message_seq = m.seq
                  AND e.event_type IN ('pec_acceptance', 'pec_delivery', 'pec_error',
                                       'pec_timeout'))
ORDER BY m.sent_ts LIMIT :limit;
