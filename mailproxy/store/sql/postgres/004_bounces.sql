-- Bounces, suppressions and the mailbox cursors of the bounce and PEC pollers (§12, §8.3).

-- One row per correlated bounce and recipient. `fingerprint` (the DSN's Message-ID or a
-- hash of its bytes, plus the recipient) is unique, so a rescan never records it twice.
CREATE TABLE bounces (
    id          bigserial PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    message_seq bigint,
    message_pk  text NOT NULL,
    message_id  text NOT NULL,
    recipient   text NOT NULL,
    type        text NOT NULL,
    code        text,
    reason      text,
    fingerprint text NOT NULL UNIQUE,
    event_id    bigint,
    created_ts  bigint NOT NULL
);

CREATE INDEX bounces_recent    ON bounces (tenant_id, id);
CREATE INDEX bounces_recipient ON bounces (tenant_id, recipient, type, created_ts);

CREATE TABLE suppressions (
    tenant_id   text NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    address     text NOT NULL,
    reason      text,
    source      text NOT NULL,
    bounce_code text,
    message_id  text,
    created_ts  bigint NOT NULL,
    PRIMARY KEY (tenant_id, address)
);

CREATE INDEX suppressions_recent ON suppressions (tenant_id, created_ts, address);

CREATE TABLE mailbox_cursors (
    mailbox     text PRIMARY KEY,
    uidvalidity bigint NOT NULL,
    last_uid    bigint NOT NULL,
    updated_ts  bigint NOT NULL
);

CREATE TABLE poller_leases (
    name  text PRIMARY KEY,
    owner text NOT NULL,
    until double precision NOT NULL
);

CREATE TABLE pec_receipts (
    fingerprint text PRIMARY KEY,
    message_seq bigint NOT NULL,
    created_ts  bigint NOT NULL
);

CREATE INDEX messages_pec_sent ON messages (sent_ts) WHERE is_pec AND status = 'sent';

CREATE INDEX messages_client_id ON messages (client_id);
